"""The comparator's verdict: what was not validated fails it, with its reason; the size budget
is judged without a run; an accuracy failure says how many eval images it is."""

from __future__ import annotations

from runtime_check.verdict import judge_artifact, verdict

OK = {
    "path": "a.onnx",
    "status": "ok",
    "accuracy": 90.0,
    "agreement": 1.0,
    "bytes": 1000,
    "samples": 200,
    "latency_ms": {"p50": 1.0, "p90": 2.0, "mean": 1.2},
}
BUDGETS = {"max_accuracy_drop": 1.5, "max_bytes": 5000}


def test_a_missing_or_errored_row_fails_with_its_reason():
    assert verdict([OK], 90.0, BUDGETS) == (True, [])
    missing = {"path": "b.tflite"}
    ok, reasons = verdict([OK, missing], 90.0, BUDGETS)
    assert not ok and reasons == ["b.tflite: not validated (no result)"]
    errored = {"path": "b.tflite", "status": "error", "reason": "not checked"}
    ok, reasons = verdict([OK, errored], 90.0, BUDGETS)
    assert not ok and reasons == ["b.tflite: not validated (not checked)"]
    # A runtime missing on the machine is not a choice of the recipe: the artifact was not
    # validated.
    unavailable = {"path": "b.tflite", "status": "skipped", "reason": "no TFLite runtime"}
    ok, reasons = verdict([OK, unavailable], 90.0, BUDGETS)
    assert not ok and reasons == ["b.tflite: not validated (no TFLite runtime)"]
    # Every row "not checked" (the `@` in --out of issue 14): nothing passes.
    ok, reasons = verdict([errored], 90.0, BUDGETS)
    assert not ok and reasons[-1] == "no artifact could be validated"


def test_the_recipes_own_skip_does_not_fail_but_its_size_is_judged():
    excluded = {
        "path": "b.tflite",
        "status": "skipped",
        "reason": "litert is not in the recipe's runtimes",
        "excluded": True,
        "bytes": 4000,
    }
    assert verdict([OK, excluded], 90.0, BUDGETS) == (True, [])
    big = {**excluded, "bytes": 228_000_000}
    ok, reasons = verdict([OK, big], 90.0, BUDGETS)
    assert not ok and reasons == ["b.tflite: max_bytes 2.28e+08 vs limit 5000"]


def test_size_is_judged_on_an_artifact_that_did_not_run():
    errored = {"path": "b.onnx", "status": "error", "reason": "boom", "bytes": 228_000_000}
    assert judge_artifact(errored, 90.0, BUDGETS) == {
        "max_bytes": {"limit": 5000, "value": 228_000_000, "ok": False}
    }
    ok, reasons = verdict([OK, errored], 90.0, BUDGETS)
    assert not ok
    assert reasons == ["b.onnx: not validated (boom)", "b.onnx: max_bytes 2.28e+08 vs limit 5000"]


def test_an_accuracy_failure_is_counted_in_images():
    low = {**OK, "accuracy": 88.0}  # 4 of 200 images, 0.5 points each
    judged = judge_artifact(low, 90.0, BUDGETS)["max_accuracy_drop"]
    assert judged["images"] == 4 and judged["ok"] is False
    ok, reasons = verdict([low], 90.0, BUDGETS)
    assert not ok
    assert reasons == [
        "a.onnx: max_accuracy_drop 2 vs limit 1.5 (4 of 200 images; 1 image = 0.5 points)"
    ]
    # Three images (1.5 points) hold a 1.5-point budget, float noise or not.
    held = {**OK, "accuracy": 90.0 - 300 / 200}
    assert judge_artifact(held, 90.0, BUDGETS)["max_accuracy_drop"]["images"] == 3
    assert verdict([held], 90.0, BUDGETS) == (True, [])
