"""The comparator: runtime_check results + reference accuracy + budgets -> verdict. Pure."""

from __future__ import annotations

# Slack for the limit side only: limit * samples / 100 is itself computed in floats.
_EPS = 1e-9


def drop_within(drop: float, limit: float, samples: int | None) -> bool:
    """Whether an accuracy drop holds a limit (both in points), to within one image.

    Two accuracies over the same ``samples`` images differ by a whole number of images
    (100 / samples points each), but float arithmetic leaves the difference a hair off it:
    3 images of 1000 come out as 0.30000000000001137 points. The drop is therefore counted
    in whole images, round(drop * samples / 100), and holds when that count is at most
    limit * samples / 100: float noise never fails a budget, and a drop one image over the
    limit always does. Without a sample count the comparison is plain (with _EPS).
    """
    if samples:
        return round(drop * samples / 100.0) <= limit * samples / 100.0 + _EPS
    return drop <= limit + _EPS


def judge_artifact(result: dict, reference_accuracy: float, budgets: dict) -> dict:
    """Per-budget {limit, value, ok} for one artifact result; empty unless status is ok."""
    if result.get("status") != "ok":
        return {}
    drop = reference_accuracy - result["accuracy"]
    checks = {
        "max_accuracy_drop": (
            budgets.get("max_accuracy_drop"),
            drop,
            lambda v, lim: drop_within(v, lim, result.get("samples")),
        ),
        "min_agreement": (
            budgets.get("min_agreement"),
            result["agreement"],
            lambda v, lim: v >= lim,
        ),
        # Emulated wall time (QEMU) is not latency: no latency budget applies to it.
        "max_latency_p90_ms": (
            None if result["latency_ms"].get("emulated") else budgets.get("max_latency_p90_ms"),
            result["latency_ms"]["p90"],
            lambda v, lim: v <= lim,
        ),
        "max_bytes": (budgets.get("max_bytes"), result["bytes"], lambda v, lim: v <= lim),
    }
    return {
        name: {"limit": lim, "value": value, "ok": bool(ok(value, lim))}
        for name, (lim, value, ok) in checks.items()
        if lim is not None
    }


def verdict(
    results: list[dict], reference_accuracy: float, budgets: dict
) -> tuple[bool, list[str]]:
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


def parity(results: list[dict]) -> list[dict]:
    """Top-1 agreement between every two validated artifacts (e.g. ONNX int8 vs TFLite int8).

    Uses the per-image ``predictions`` runtime_check returns; pairs are listed once, in the
    order the artifacts were given.
    """
    ok = [r for r in results if r.get("status") == "ok" and "predictions" in r]
    rows = []
    for i, a in enumerate(ok):
        for b in ok[i + 1 :]:
            pa, pb = a["predictions"], b["predictions"]
            if len(pa) != len(pb) or not pa:
                continue
            same = sum(x == y for x, y in zip(pa, pb, strict=True))
            rows.append({"a": a["path"], "b": b["path"], "agreement": same / len(pa)})
    return rows
