"""build_report's verdict: not validated fails, meaningless says so, the eval set's resolution
is stated, and the console shows the state."""

from __future__ import annotations

import io

import numpy as np
import pytest
from rich.console import Console

from exporter.artifacts import Artifact
from exporter.report.build import build_report, print_table, reference_for
from exporter.report.html import render_html
from exporter.report.schema import DataInfo, ModelInfo, Normalization, Report, Target

BUDGETS = {
    "max_accuracy_drop": 1.5,
    "min_agreement": None,
    "max_latency_p90_ms": None,
    "max_bytes": 5000,
}


def _ok(path: str, accuracy: float, samples: int) -> dict:
    return {
        "path": path,
        "status": "ok",
        "bytes": 1000,
        "gzip_bytes": 900,
        "accuracy": accuracy,
        "agreement": 1.0,
        "max_abs_diff": 0.0,
        "latency_ms": {"p50": 1.0, "p90": 1.0, "mean": 1.0, "runs": 3},
        "samples": samples,
    }


def _report(results: list[dict], labels, accuracy: float, *, random_weights=False) -> Report:
    arts = [
        Artifact("model.fp32.onnx", "onnx", "fp32", "dense", sha256="a" * 64, bytes=1000),
        Artifact("model.fp32.tflite", "tflite", "fp32", "dense", sha256="b" * 64, bytes=9000),
    ]
    return build_report(
        target=Target("x86_64", "targets/x86_64.toml", "local", "this machine"),
        model=ModelInfo("seed-cnn", None, [1, 8, 8], list("0123"), random_weights=random_weights),
        data=DataInfo("d", 10, "e", len(labels), "hold-out", Normalization([0.5], [0.5], "data")),
        recipe={"budgets": BUDGETS},
        reference=reference_for(accuracy, labels),
        artifacts=arts,
        check={"results": results},
        edgepack_version="test",
    )


BALANCED = np.arange(200) % 4


def test_reference_states_its_resolution():
    ref = reference_for(75.0, np.array([0, 0, 0, 1, 2, 2]))
    assert ref.samples == 6 and ref.points_per_image == pytest.approx(100 / 6)
    assert ref.eval_classes == 3 and ref.chance_accuracy == pytest.approx(50.0)


def test_an_artifact_without_a_result_fails_and_its_size_is_still_judged():
    rep = _report([_ok("model.fp32.onnx", 90.0, 200)], BALANCED, 90.0)
    assert rep.passed is False and rep.verdict == "failed"
    assert rep.reasons == [
        "model.fp32.tflite: not validated (not checked)",
        "model.fp32.tflite: max_bytes 9000 vs limit 5000",
    ]
    row = rep.artifacts[1]
    assert row.status == "error" and row.bytes == 9000 and row.sha256 == "b" * 64
    assert row.budgets["max_bytes"].ok is False
    # Written and read back: the typed report holds the state.
    assert Report.from_dict(rep.to_dict()).verdict == "failed"


def test_random_weights_are_not_meaningful_even_when_every_budget_holds():
    results = [_ok("model.fp32.onnx", 90.0, 200), _ok("model.fp32.tflite", 90.0, 200)]
    results[1]["bytes"] = 1000
    rep = _report(results, BALANCED, 90.0)
    assert rep.passed and rep.verdict == "passed" and rep.reasons == []
    rep = _report(results, BALANCED, 90.0, random_weights=True)
    assert rep.passed is False and rep.verdict == "not_meaningful"
    assert len(rep.reasons) == 1 and "random initial weights" in rep.reasons[0]
    text = io.StringIO()
    print_table(rep.to_dict(), Console(file=text, width=200))
    assert "NOT MEANINGFUL: seed-cnn has no --weights" in text.getvalue()
    page = render_html(rep.to_dict())
    assert '<div class="verdict moot" id="verdict"><span class="word">NOT MEANINGFUL</span>' in page


def test_one_class_and_chance_level_are_not_meaningful():
    results = [_ok("model.fp32.onnx", 100.0, 200), _ok("model.fp32.tflite", 100.0, 200)]
    results[1]["bytes"] = 1000
    rep = _report(results, np.zeros(200, int), 100.0)
    assert rep.verdict == "not_meaningful" and "one class" in rep.reasons[0]
    # 4 balanced classes over 200 images: chance is 25 %, its standard error 3.06 points, so
    # up to 34.2 % is chance level and 35 % is not.
    for acc, state in ((34.0, "not_meaningful"), (35.0, "passed")):
        res = [{**r, "accuracy": acc} for r in results]
        assert _report(res, BALANCED, acc).verdict == state, acc
    # A failed budget stays `failed`; the not-meaningful reason is kept beside it.
    res = [{**r, "accuracy": 20.0} for r in results]
    rep = _report(res, BALANCED, 30.0)
    assert rep.verdict == "failed" and rep.reasons[0].startswith("not meaningful: ")


def test_a_budget_finer_than_three_images_is_noted():
    labels = np.arange(60) % 4
    results = [_ok("model.fp32.onnx", 90.0, 60), _ok("model.fp32.tflite", 90.0, 60)]
    results[1]["bytes"] = 1000
    rep = _report(results, labels, 90.0)
    assert rep.reference.points_per_image == pytest.approx(100 / 60)
    assert rep.notes == [
        "the eval set has 60 images, so 1 image = 1.67 points: max_accuracy_drop 1.5 is 0.9 "
        "images, and one image decides it (use more eval images: eval.samples, eval.holdout or "
        "--eval-data)"
    ]
    assert rep.verdict == "passed"
    text = io.StringIO()
    print_table(rep.to_dict(), Console(file=text, width=300))
    assert "note: the eval set has 60 images, so 1 image = 1.67 points" in text.getvalue()
    # 200 images: 1.5 points is 3 images, enough.
    results = [{**r, "samples": 200} for r in results]
    assert _report(results, BALANCED, 90.0).notes == []
