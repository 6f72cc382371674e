"""The comparator: runtime_check results + reference accuracy + budgets -> verdict. Pure."""

from __future__ import annotations


def judge_artifact(result: dict, reference_accuracy: float, budgets: dict) -> dict:
    """Per-budget {limit, value, ok} for one artifact result; empty unless status is ok."""
    if result.get("status") != "ok":
        return {}
    drop = reference_accuracy - result["accuracy"]
    checks = {
        "max_accuracy_drop": (budgets.get("max_accuracy_drop"), drop, lambda v, lim: v <= lim),
        "min_agreement": (budgets.get("min_agreement"), result["agreement"],
                          lambda v, lim: v >= lim),
        # Emulated wall time (QEMU) is not latency: no latency budget applies to it.
        "max_latency_p90_ms": (None if result["latency_ms"].get("emulated")
                               else budgets.get("max_latency_p90_ms"),
                               result["latency_ms"]["p90"],
                               lambda v, lim: v <= lim),
        "max_bytes": (budgets.get("max_bytes"), result["bytes"], lambda v, lim: v <= lim),
    }
    return {name: {"limit": lim, "value": value, "ok": bool(ok(value, lim))}
            for name, (lim, value, ok) in checks.items() if lim is not None}


def verdict(results: list[dict], reference_accuracy: float, budgets: dict) -> tuple[bool, list[str]]:
    """Whether every artifact that ran holds every budget, and why not in words.

    An artifact that errored fails the verdict; one skipped for a missing runtime is reported
    but cannot pass or fail; a run where nothing was validated does not pass.
    """
    reasons = []
    validated = 0
    for r in results:
        if r.get("status") == "error":
            reasons.append(f"{r['path']}: {r.get('reason', 'error')}")
            continue
        if r.get("status") == "skipped":
            continue
        validated += 1
        for name, b in judge_artifact(r, reference_accuracy, budgets).items():
            if not b["ok"]:
                reasons.append(f"{r['path']}: {name} {b['value']:.4g} vs limit {b['limit']:.4g}")
    if validated == 0:
        reasons.append("no artifact could be validated")
    return not reasons, reasons
