"""The int8 search's cost is bounded and reported (issue #16): one calibration per method, one
tuning evaluation per attempt, the per-layer sensitivity in one streamed pass over a fixed
sample, and a budget judged within one tuning image."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch

from exporter import quantize
from exporter.inputs.data import channel_stats, load_data, stratified_split
from exporter.models.zoo import SeedCNN
from exporter.onnx.export import export_onnx, onnx_session
from exporter.quantize import SENSITIVITY_IMAGES, quantize_stage
from exporter.quantize.onnx_int8 import QuantSettings, calibration_cache, quantize_onnx
from exporter.quantize.sensitivity import (
    MIN_IMAGES,
    _expose,
    layer_sensitivity,
    sampled_sensitivity,
)
from exporter.recipe import QuantizeSpec
from exporter.training.loop import TrainConfig, train

VNNI = {"machine": "x86_64", "features": ["avx512_vnni"]}  # full 8-bit weights: no twin


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cost")
    ds = load_data("digits")
    tr, _ = stratified_split(ds, 0.2, 0)
    norm = channel_stats(ds)
    torch.manual_seed(0)
    net = SeedCNN(1, (8, 8), 10)
    train(net, norm.apply(tr.images), tr.labels, TrainConfig(epochs=3, lr=0.05))
    export_onnx(net, (1, 8, 8), tmp / "fp32.onnx")
    return tmp / "fp32.onnx", norm.apply(tr.images), tr.labels


def _search(fp32, x, y, out, spec):
    return quantize_stage(
        fp32,
        out,
        spec,
        calib_x=x[:64],
        tune_x=x[64:1064],
        tune_y=y[64:1064],
        device_kind="local",
        cpu=VNNI,
    )


def _acc(correct: int, n: int = 1000) -> float:
    """An accuracy computed the way the search computes it."""
    return float((np.arange(n) < correct).mean() * 100.0)


def test_a_float_noise_drop_at_the_budget_holds_it_and_calibrates_once(
    model, tmp_path, monkeypatch
):
    """852 then 849 of 1000 tuning images right: 3 images, the 0.3-point budget exactly, but
    0.30000000000001137 in floats. The first method holds: no fallback calibration."""
    fp32, x, y = model
    scores = iter([_acc(852), _acc(849)])
    monkeypatch.setattr(quantize, "_accuracy", lambda *a: next(scores))
    outcome = _search(fp32, x, y, tmp_path / "int8.onnx", QuantizeSpec(max_drop=0.3))
    (only,) = outcome.attempts
    assert only["drop"] == 0.30000000000001137 and only["chosen"]
    assert outcome.within_budget
    assert outcome.cost["calibrations"] == 1
    assert sorted(p.name for p in tmp_path.glob("calibration.*.json")) == [
        "calibration.minmax.json"
    ]
    # One image more is a miss: the next method is calibrated and tried.
    scores = iter([_acc(852), _acc(848), _acc(852)])
    (tmp_path / "b").mkdir()
    outcome = _search(fp32, x, y, tmp_path / "b" / "int8.onnx", QuantizeSpec(max_drop=0.3))
    assert [a["method"] for a in outcome.attempts] == ["minmax", "percentile"]
    assert outcome.cost["calibrations"] == 2


def test_the_cost_of_a_search_that_holds_its_budget(model, tmp_path):
    fp32, x, y = model
    outcome = _search(fp32, x, y, tmp_path / "int8.onnx", QuantizeSpec(max_drop=100.0))
    assert len(outcome.attempts) == 1
    cost = outcome.cost
    assert cost["calibrations"] == 1
    assert cost["evaluations"] == 2  # fp32 and the one attempt
    assert cost["tuning_images"] == 1000
    assert cost["sensitivity_passes"] == 1  # the report's table
    assert cost["sensitivity_images"] == SENSITIVITY_IMAGES == len(x[:SENSITIVITY_IMAGES])
    assert 0 < cost["sensitivity_seconds"] <= outcome.seconds
    assert len(outcome.sensitivity) >= 4  # one pass, yet a row for every layer


def test_a_failed_budget_ranks_layers_with_one_pass_not_one_per_layer(model, tmp_path):
    fp32, x, y = model
    spec = QuantizeSpec(max_drop=-1.0, max_float_layers=2)  # unreachable: every step runs
    outcome = _search(fp32, x, y, tmp_path / "int8.onnx", spec)
    cost = outcome.cost
    assert cost["calibrations"] == 3  # minmax, percentile, entropy: once each
    assert cost["evaluations"] == 1 + len(outcome.attempts) == 1 + 3 + 2
    chosen = next(a for a in outcome.attempts if a["chosen"])
    # The ranking pass is reused as the table when no layer went back to float.
    assert cost["sensitivity_passes"] == (2 if chosen["float_layers"] else 1)
    assert cost["sensitivity_passes"] < len(outcome.sensitivity)


def test_streamed_sensitivity_equals_the_whole_batch_formula(model, tmp_path):
    """Sums over batches give the cosine and SNR of the concatenated outputs."""
    fp32, x, _ = model
    q = tmp_path / "q.onnx"
    quantize_onnx(
        fp32, q, QuantSettings(), calib_inputs=x[:64], cache=calibration_cache(tmp_path, "minmax")
    )
    images = x[:300]
    rows = layer_sensitivity(fp32, q, images)
    names = [r["tensor"] for r in rows]
    qm = onnx.load(str(q))
    q_tensors = {o for n in qm.graph.node for o in n.output}
    q_names = [
        f"{t}_DequantizeLinear_Output" if f"{t}_DequantizeLinear_Output" in q_tensors else t
        for t in names
    ]
    s_fp = onnx_session(_expose(onnx.load(str(fp32)), names), optimize=False)
    s_q = onnx_session(_expose(qm, q_names), optimize=False)
    fp_all = dict(
        zip([o.name for o in s_fp.get_outputs()], s_fp.run(None, {"input": images}), strict=True)
    )
    q_all = dict(
        zip([o.name for o in s_q.get_outputs()], s_q.run(None, {"input": images}), strict=True)
    )
    for row, t, qt in zip(rows, names, q_names, strict=True):
        a = fp_all[t].astype(np.float64).ravel()
        b = q_all[qt].astype(np.float64).ravel()
        cosine = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
        snr = 10 * math.log10(np.sum(a**2) / np.sum((a - b) ** 2))
        assert row["cosine"] == pytest.approx(cosine, rel=1e-9), t
        assert row["snr_db"] == pytest.approx(snr, rel=1e-9), t


def test_a_sampled_pass_stops_at_its_byte_budget(model, tmp_path):
    """A large net gets fewer sensitivity images (at least MIN_IMAGES), the same rows as a
    pass over exactly those images."""
    fp32, x, _ = model
    q = tmp_path / "q.onnx"
    quantize_onnx(
        fp32, q, QuantSettings(), calib_inputs=x[:64], cache=calibration_cache(tmp_path, "minmax")
    )
    rows, used = sampled_sensitivity(fp32, q, x[:64], budget_bytes=1)
    assert used == MIN_IMAGES
    assert rows == layer_sensitivity(fp32, q, x[:MIN_IMAGES])
    rows, used = sampled_sensitivity(fp32, q, x[:64], budget_bytes=None)
    assert used == 64
