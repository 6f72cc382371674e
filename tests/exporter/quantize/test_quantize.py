import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from exporter.inputs.data import channel_stats, load_data, stratified_split
from exporter.models.zoo import SeedCNN
from exporter.onnx.export import export_onnx
from exporter.quantize import decide_reduce_range, quantize_stage
from exporter.quantize.onnx_int8 import QuantSettings, calibration_cache, quantize_onnx
from exporter.quantize.sensitivity import first_divergence, layer_sensitivity
from exporter.recipe import QuantizeSpec
from exporter.training.loop import TrainConfig, train


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    """A seed CNN trained on digits for a few epochs, exported to ONNX, with its data."""
    tmp = tmp_path_factory.mktemp("q")
    ds = load_data("digits")
    tr, ev = stratified_split(ds, 0.2, 0)
    norm = channel_stats(ds)
    torch.manual_seed(0)
    model = SeedCNN(1, (8, 8), 10)
    train(model, norm.apply(tr.images), tr.labels, TrainConfig(epochs=4, lr=0.05))
    export_onnx(model, (1, 8, 8), tmp / "fp32.onnx")
    return tmp, norm.apply(tr.images), tr.labels, norm.apply(ev.images), ev.labels


def _logits(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


@pytest.mark.parametrize(
    "setting, kind, cpu, expected",
    [
        ("auto", "local", {"machine": "x86_64", "features": ["avx2", "fma"]}, True),
        ("auto", "local", {"machine": "x86_64", "features": ["avx2", "avx512_vnni"]}, False),
        ("auto", "local", {"machine": "x86_64", "features": ["avx2", "avx_vnni"]}, False),
        ("auto", "local", {"machine": "aarch64", "features": ["asimd", "asimddp"]}, False),
        ("auto", "qemu", {"machine": "x86_64", "features": ["avx2"]}, False),
        ("on", "local", {"machine": "aarch64", "features": []}, True),
        ("off", "local", {"machine": "x86_64", "features": ["avx2"]}, False),
    ],
)
def test_reduce_range_decision(setting, kind, cpu, expected):
    on, reason = decide_reduce_range(setting, kind, cpu)
    assert on is expected and reason


def test_int8_onnx_tracks_float_on_this_cpu(digits_model):
    """ORT int8 on x86 without VNNI saturates (56 % vs 76 % on CIFAR, measured elsewhere);
    the recipe's choice for *this* CPU must give an artifact that tracks the float model."""
    from runtime_check.cpu import describe_cpu

    tmp, tr_x, tr_y, ev_x, ev_y = digits_model
    outcome = quantize_stage(
        tmp / "fp32.onnx",
        tmp / "int8.onnx",
        QuantizeSpec(),
        calib_x=tr_x[:128],
        tune_x=tr_x[128:600],
        tune_y=tr_y[128:600],
        device_kind="local",
        cpu=describe_cpu(),
    )
    ref = _logits(tmp / "fp32.onnx", ev_x)
    q = _logits(tmp / "int8.onnx", ev_x)
    agreement = (ref.argmax(1) == q.argmax(1)).mean()
    drop = ((ref.argmax(1) == ev_y).mean() - (q.argmax(1) == ev_y).mean()) * 100
    assert agreement >= 0.98, f"int8 agrees with fp32 on only {agreement:.1%}"
    assert drop <= 1.0
    # Logit error small relative to the logit range: a saturated model is off by tens of %.
    assert np.abs(q - ref).max() <= 0.1 * np.abs(ref).max()
    assert outcome.within_budget and outcome.attempts[0]["chosen"]
    assert (tmp / "calibration.minmax.json").is_file()


def test_search_tries_fallbacks_then_float_layers(digits_model, tmp_path):
    tmp, tr_x, tr_y, _, _ = digits_model
    spec = QuantizeSpec(max_drop=-1.0, max_float_layers=2)  # unreachable: exercise every step
    outcome = quantize_stage(
        tmp / "fp32.onnx",
        tmp_path / "int8.onnx",
        spec,
        calib_x=tr_x[:64],
        tune_x=tr_x[64:300],
        tune_y=tr_y[64:300],
        device_kind="local",
        cpu={"machine": "x86_64", "features": ["avx512_vnni"]},
    )
    methods = [a["method"] for a in outcome.attempts if not a["float_layers"]]
    assert methods == ["minmax", "percentile", "entropy"]
    floats = [a["float_layers"] for a in outcome.attempts if a["float_layers"]]
    assert [len(f) for f in floats] == [1, 2]
    assert not outcome.within_budget
    assert sum(a["chosen"] for a in outcome.attempts) == 1
    best = min(a["drop"] for a in outcome.attempts)
    assert next(a for a in outcome.attempts if a["chosen"])["drop"] == best
    # The written model is the chosen one: its float layers carry float weights.
    chosen = next(a for a in outcome.attempts if a["chosen"])
    model = onnx.load(str(tmp_path / "int8.onnx"))
    for node in model.graph.node:
        if node.name in chosen["float_layers"]:
            assert not any(
                i.endswith("_DequantizeLinear_Output") and "weight" in i for i in node.input
            )


def test_sensitivity_names_a_broken_layer(digits_model, tmp_path):
    tmp, tr_x, _, ev_x, _ = digits_model
    quantize_onnx(
        tmp / "fp32.onnx",
        tmp_path / "q.onnx",
        QuantSettings(),
        calib_inputs=tr_x[:64],
        cache=calibration_cache(tmp_path, "minmax"),
    )
    rows = layer_sensitivity(tmp / "fp32.onnx", tmp_path / "q.onnx", ev_x[:100])
    assert [r["op"] for r in rows][0] == "Conv+Relu"
    assert all(r["cosine"] > 0.99 for r in rows)
    assert first_divergence(rows) is None
    # Corrupt the second conv's weight scales: the table must point at that layer first.
    model = onnx.load(str(tmp_path / "q.onnx"))
    conv2 = [n for n in model.graph.node if n.op_type == "Conv"][1]
    w_dq = next(n for n in model.graph.node if n.output[0] == conv2.input[1])
    for init in model.graph.initializer:
        if init.name == w_dq.input[1]:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * -3.0, init.name))
    onnx.save(model, str(tmp_path / "broken.onnx"))
    rows = layer_sensitivity(tmp / "fp32.onnx", tmp_path / "broken.onnx", ev_x[:100])
    assert first_divergence(rows) == conv2.name
