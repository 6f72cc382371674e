"""The comparator: runtime_check results + reference accuracy + budgets -> verdict. Pure."""

from __future__ import annotations

# Slack for the limit side only: limit * samples / 100 is itself computed in floats.
_EPS = 1e-9
# A board's memory in whole bytes, as its linker map shows it (max_bytes keeps its 4 digits).
_BYTE_BUDGETS = ("max_arena_bytes", "max_flash_bytes")


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


def images_of(drop: float, samples: int) -> int:
    """An accuracy difference in points, counted in whole eval images."""
    return round(drop * samples / 100.0)


def _size_check(result: dict, budgets: dict) -> dict:
    """max_bytes needs no run: it is judged whenever the file's size is known."""
    limit, size = budgets.get("max_bytes"), result.get("bytes")
    if limit is None or size is None:
        return {}
    return {"max_bytes": {"limit": limit, "value": size, "ok": bool(size <= limit)}}


def judge_artifact(result: dict, reference_accuracy: float, budgets: dict) -> dict:
    """Per-budget {limit, value, ok} for one artifact result (``images``: the accuracy drop in
    eval images). Only max_bytes when the artifact did not run (status not ok)."""
    if result.get("status") != "ok":
        return _size_check(result, budgets)
    drop = reference_accuracy - result["accuracy"]
    samples = result.get("samples")
    latency = result.get("latency_ms") or {}
    checks = {
        "max_accuracy_drop": (
            budgets.get("max_accuracy_drop"),
            drop,
            lambda v, lim: drop_within(v, lim, samples),
        ),
        "min_agreement": (
            budgets.get("min_agreement"),
            result["agreement"],
            lambda v, lim: v >= lim,
        ),
        # Emulated wall time (QEMU) is not latency: no latency budget applies to it. A TFLM
        # result has no latency at all (reference kernels on this CPU are not the board).
        "max_latency_p90_ms": (
            None if latency.get("emulated") else budgets.get("max_latency_p90_ms"),
            latency.get("p90"),
            lambda v, lim: v is not None and v <= lim,
        ),
        # TFLM targets: the smallest arena the model ran in, and its bytes in flash.
        "max_arena_bytes": (
            budgets.get("max_arena_bytes"),
            result.get("arena_bytes"),
            lambda v, lim: v is not None and v <= lim,
        ),
        "max_flash_bytes": (
            budgets.get("max_flash_bytes"),
            result.get("flash_bytes"),
            lambda v, lim: v is not None and v <= lim,
        ),
    }
    judged = {
        name: {"limit": lim, "value": value, "ok": bool(ok(value, lim))}
        for name, (lim, value, ok) in checks.items()
        if lim is not None
    }
    if "max_accuracy_drop" in judged and samples:
        judged["max_accuracy_drop"]["images"] = images_of(drop, samples)
    return {**judged, **_size_check(result, budgets)}


def _failure(path: str, name: str, b: dict, samples: int | None) -> str:
    if b["value"] is None:
        return f"{path}: {name} not measured (limit {b['limit']:.4g})"
    if name in _BYTE_BUDGETS:
        return f"{path}: {name} {b['value']:,} vs limit {b['limit']:,}"
    line = f"{path}: {name} {b['value']:.4g} vs limit {b['limit']:.4g}"
    if name == "max_accuracy_drop" and samples:
        # The resolution of the figure, so a reader can tell one unlucky image from a real loss.
        line += f" ({b['images']} of {samples} images; 1 image = {100.0 / samples:.3g} points)"
    return line


def verdict(
    results: list[dict], reference_accuracy: float, budgets: dict
) -> tuple[bool, list[str]]:
    """Whether every artifact was validated and holds every budget, and why not in words.

    Any result that is not ``ok`` fails the verdict with its reason (an error, a runtime missing
    on the machine, a result that never came back), except a skip the recipe asked for
    (``excluded``: its runtime is not in ``runtime.runtimes``). max_bytes is judged for every
    artifact whose size is known, validated or not. A run where nothing was validated fails.
    """
    reasons = []
    validated = 0
    for r in results:
        status = r.get("status")
        if status == "ok":
            validated += 1
        elif not (status == "skipped" and r.get("excluded")):
            reasons.append(f"{r['path']}: not validated ({r.get('reason') or 'no result'})")
        for name, b in judge_artifact(r, reference_accuracy, budgets).items():
            if not b["ok"]:
                reasons.append(_failure(r["path"], name, b, r.get("samples")))
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
