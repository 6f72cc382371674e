"""Accuracy budgets are judged within one image: float noise in a difference of two accuracies
never fails a budget (issue #13: a drop of 0.30000000000001137 against 0.3 ran a second
calibration), while one image over the budget always does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import exporter.quantize as quantize
from exporter.models.zoo import SeedCNN
from exporter.onnx.export import export_onnx
from exporter.recipe import QuantizeSpec
from runtime_check.verdict import drop_within, judge_artifact, verdict

N = 1000


def _acc(correct: int, n: int = N) -> float:
    """An accuracy computed the way runtime_check and the quantizer compute it."""
    return float((np.arange(n) < correct).mean() * 100.0)


def test_the_constructed_drop_is_float_noise_over_the_budget():
    # 852 vs 849 of 1000: exactly 3 images, 0.3 points, but not in floats.
    drop = _acc(852) - _acc(849)
    assert drop == 0.30000000000001137 and drop > 0.3


@pytest.mark.parametrize(
    "before, after, limit, n, holds",
    [
        (852, 849, 0.3, N, True),  # 3 images = the budget, up to float error
        (852, 848, 0.3, N, False),  # one image over
        (852, 852, 0.0, N, True),  # no drop
        (852, 853, 0.0, N, True),  # better than the reference
        (300, 299, 0.25, 359, False),  # fewer images: one image is 0.279 points > 0.25
        (300, 299, 0.28, 359, True),  # one image, 0.2786 points <= 0.28
        (300, 298, 0.28, 359, False),
    ],
)
def test_drop_within_counts_whole_images(before, after, limit, n, holds):
    drop = _acc(before, n) - _acc(after, n)
    assert drop_within(drop, limit, n) is holds


def test_one_image_over_the_limit_fails_at_any_size():
    for n in (10, 359, 1000, 10_000):
        for k in range(min(12, n // 2)):
            limit = k * 100.0 / n
            assert drop_within(_acc(n // 2, n) - _acc(n // 2 - k, n), limit, n), (n, k)
            assert not drop_within(_acc(n // 2, n) - _acc(n // 2 - k - 1, n), limit, n), (n, k)


def _result(accuracy: float, samples: int = N) -> dict:
    return {
        "path": "m.tflite",
        "status": "ok",
        "accuracy": accuracy,
        "agreement": 1.0,
        "bytes": 10,
        "samples": samples,
        "latency_ms": {"p50": 1.0, "p90": 1.0, "mean": 1.0, "runs": 1},
    }


def test_verdict_passes_a_drop_equal_to_the_budget_up_to_float_error():
    ref = _acc(852)
    budgets = {"max_accuracy_drop": 0.3}
    judged = judge_artifact(_result(_acc(849)), ref, budgets)["max_accuracy_drop"]
    assert judged["value"] > 0.3 and judged["ok"] is True
    assert verdict([_result(_acc(849))], ref, budgets) == (True, [])
    ok, reasons = verdict([_result(_acc(848))], ref, budgets)
    assert not ok and reasons == [
        "m.tflite: max_accuracy_drop 0.4 vs limit 0.3 (4 of 1000 images; 1 image = 0.1 points)"
    ]


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("budget")
    torch.manual_seed(0)
    export_onnx(SeedCNN(1, (8, 8), 10), (1, 8, 8), tmp / "fp32.onnx")
    return tmp / "fp32.onnx"


def _search(fp32_onnx, tmp_path, monkeypatch, int8_accuracies: list[float]):
    """quantize_stage with the tuning accuracies given: fp32 852/1000, then each int8 try."""
    given = iter([_acc(852), *int8_accuracies])
    monkeypatch.setattr(quantize, "_accuracy", lambda *a: next(given))
    x = np.random.default_rng(0).normal(size=(N, 1, 8, 8)).astype(np.float32)
    return quantize.quantize_stage(
        fp32_onnx,
        tmp_path / "int8.onnx",
        QuantizeSpec(max_drop=0.3, max_float_layers=0),
        calib_x=x[:32],
        tune_x=x,
        tune_y=np.zeros(N, np.int64),
        device_kind="local",
        cpu={"machine": "x86_64", "features": ["avx512_vnni"]},
    )


def test_int8_search_stops_at_a_drop_equal_to_its_budget(fp32_onnx, tmp_path, monkeypatch):
    outcome = _search(fp32_onnx, tmp_path, monkeypatch, [_acc(849)])
    assert [a["method"] for a in outcome.attempts] == ["minmax"]  # no second calibration
    assert outcome.attempts[0]["drop"] > 0.3
    assert outcome.within_budget and outcome.attempts[0]["chosen"]
    assert not list(tmp_path.glob("calibration.percentile.json"))


def test_int8_search_goes_on_one_image_over_its_budget(fp32_onnx, tmp_path, monkeypatch):
    outcome = _search(fp32_onnx, tmp_path, monkeypatch, [_acc(848), _acc(848), _acc(848)])
    assert [a["method"] for a in outcome.attempts] == ["minmax", "percentile", "entropy"]
    assert not outcome.within_budget
