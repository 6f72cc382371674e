"""Per-op int8 parity: LiteRT int8 vs onnxruntime on the same QDQ model, within 1 output LSB.

ORT runs with ORT_DISABLE_ALL, i.e. the QDQ graph as written (float ops between Q -> DQ), which
rounds like the integer kernels; its default optimizations fuse QDQ into int8 kernels too.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from int8_testutil import TfliteRunner, ort_probe, ort_probe_is_float, qdq_model
from torch import nn

from exporter.tflite import convert_onnx_file, describe_tflite

CHW = (3, 10, 7)  # even H with stride 2 needs an explicit PAD; odd W is TFLite SAME


class Lambda(nn.Module):
    def __init__(self, body: nn.Module, fn):
        super().__init__()
        self.body, self.fn = body, fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.body(x), x)


def _conv(cout: int = 5, **kw) -> nn.Module:
    return nn.Conv2d(3, cout, 3, padding=1, **kw)


# id, module, ONNX op whose output is probed (None: the model output), TFLite int8 op expected
CASES = [
    ("conv3x3_s1_pad1", _conv(), None, "CONV_2D"),
    ("conv3x3_s2_pad1", _conv(stride=2), None, "CONV_2D"),
    ("conv3x3_valid", nn.Conv2d(3, 4, 3), None, "CONV_2D"),
    ("depthwise_m2", nn.Conv2d(3, 6, 3, padding=1, groups=3), None, "DEPTHWISE_CONV_2D"),
    (
        "depthwise_after_conv",
        nn.Sequential(nn.Conv2d(3, 6, 1), nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=6)),
        None,
        "DEPTHWISE_CONV_2D",
    ),
    (
        "grouped_conv",
        nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 6, 3, padding=1, groups=2)),
        None,
        "CONV_2D",
    ),
    (
        "fc_after_flatten",
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 8 * 5, 11)),
        None,
        "FULLY_CONNECTED",
    ),
    ("add_residual", Lambda(_conv(3), lambda y, x: y + x), None, "ADD"),
    # Pools only move or average integers, so a conv's rounding passes through unchanged.
    # Other single-input ops read the graph input, which both runtimes quantize identically (the
    # tests feed int8), so a 1-LSB rounding difference in a conv cannot leak into the probe.
    ("maxpool", Lambda(_conv(), lambda y, x: F.max_pool2d(y, 2)), None, "MAX_POOL_2D"),
    # XNNPACK has no int8 AVERAGE_POOL_2D: a window that never covers padding is a depthwise conv.
    ("avgpool", Lambda(_conv(), lambda y, x: F.avg_pool2d(y, 2)), None, "DEPTHWISE_CONV_2D"),
    (
        "avgpool_ceil",
        Lambda(_conv(), lambda y, x: F.avg_pool2d(y, 2, ceil_mode=True, count_include_pad=False)),
        None,
        "AVERAGE_POOL_2D",
    ),
    (
        "global_avgpool",
        Lambda(
            _conv(4),
            lambda y, x: torch.cat([F.adaptive_avg_pool2d(x, 1), F.adaptive_avg_pool2d(y, 1)], 1),
        ),
        "ReduceMean",
        "MEAN",
    ),
    ("concat_scales", Lambda(_conv(), lambda y, x: torch.cat([y, x], 1)), None, "CONCATENATION"),
    ("softmax", Lambda(nn.Identity(), lambda y, x: torch.softmax(x, 1)), None, "SOFTMAX"),
    ("sigmoid", Lambda(nn.Identity(), lambda y, x: torch.sigmoid(x)), None, "LOGISTIC"),
    ("relu6", Lambda(nn.Identity(), lambda y, x: torch.cat([F.relu6(x), x], 1)), "Clip", "RELU6"),
    (
        "hardswish",
        Lambda(nn.Identity(), lambda y, x: torch.cat([F.hardswish(x), x], 1)),
        "HardSwish",
        "HARD_SWISH",
    ),
    ("tanh", Lambda(nn.Identity(), lambda y, x: torch.cat([torch.tanh(x), x], 1)), "Tanh", "TANH"),
]


def _probe_value(int8_path, op_type: str | None) -> str | None:
    if op_type is None:
        return None
    model = onnx.load(str(int8_path))
    return next(n.output[0] for n in model.graph.node if n.op_type == op_type)


@pytest.mark.parametrize(
    ("module", "probe", "tfl_op"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_int8_op_parity(module, probe, tfl_op, tmp_path):
    torch.manual_seed(0)
    for p in module.parameters():  # deterministic, not all-positive weights
        p.data.uniform_(-0.5, 0.5)
    _, int8 = qdq_model(module, CHW, tmp_path)
    # For XNNPACK, int8 ops it has no kernel for run in float: test their int8 kernels for
    # targets without it.
    delegate = "none" if tfl_op in ("HARD_SWISH", "AVERAGE_POOL_2D") else "xnnpack"
    result = convert_onnx_file(int8, tmp_path / "m.tflite", io_dtype="int8", delegate=delegate)
    assert result.precision == "int8" and result.io_dtype == "int8"
    assert result.float_fallback_ops == [] and result.transpose_count == 0
    assert tfl_op in result.op_counts, result.op_counts
    data = result.path.read_bytes()
    info = describe_tflite(data)
    assert all(t["dtype"] != "float32" for t in info["tensors"]), "full-integer model"
    value = _probe_value(int8, probe)
    x = np.random.default_rng(1).standard_normal((6, *CHW)).astype(np.float32)
    ref = ort_probe(int8, x, value)
    # XNNPACK keeps a delegated graph's inner tensors to itself: an inner probe is read with
    # the builtin kernels, and XNNPACK must then agree with them on the model output.
    builtin = TfliteRunner(data, "builtin", preserve=value is not None)
    got = builtin(x, value)
    detail = (
        builtin.out
        if value is None
        else next(d for d in builtin.it.get_tensor_details() if d["name"] == value)
    )
    scale, zp = detail["quantization"]
    assert scale > 0
    if value is not None and ort_probe_is_float(int8, value):
        # ONNX left this value in float: round ORT's result onto the int8 tensor's grid.
        ref = (np.clip(np.rint(ref / scale) + zp, -128, 127) - zp) * scale
    err = float(np.abs(got - ref).max())
    assert err <= 1.01 * scale, f"builtin: max |delta| {err:.4g} > 1 LSB ({scale:.4g})"
    xnn = TfliteRunner(data, "xnnpack")(x)
    ref_out = ort_probe(int8, x) if value is not None else ref
    out_scale = xnn_scale = builtin.out["quantization"][0]
    assert np.abs(xnn - (builtin(x) if value is not None else ref)).max() <= 1.01 * xnn_scale
    if value is None:
        assert np.abs(xnn - ref_out).max() <= 1.01 * out_scale


def test_float_fallback_op_is_wrapped_and_reported(tmp_path):
    """FLOOR has no int8 kernel: DEQUANTIZE -> FLOOR -> QUANTIZE, listed in float_fallback_ops."""
    torch.manual_seed(0)
    _, int8 = qdq_model(
        Lambda(_conv(), lambda y, x: torch.cat([torch.floor(y), y], 1)), CHW, tmp_path
    )
    result = convert_onnx_file(int8, tmp_path / "m.tflite", io_dtype="int8")
    assert result.float_fallback_ops == ["FLOOR"]
    assert result.op_counts["DEQUANTIZE"] == 1 and result.op_counts["QUANTIZE"] >= 1
    data = result.path.read_bytes()
    x = np.random.default_rng(1).standard_normal((6, *CHW)).astype(np.float32)
    ref = ort_probe(int8, x)
    for resolver in ("xnnpack", "builtin"):
        runner = TfliteRunner(data, resolver)
        got = runner(x)
        assert np.abs(got - ref).max() <= 1.01 * runner.out["quantization"][0]


def test_excluded_node_stays_float(tmp_path):
    """A conv left in float by nodes_to_exclude (float weights in the QDQ model) stays float."""
    module = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 1))
    fp32, _ = qdq_model(module, CHW, tmp_path)
    last_conv = [n.name for n in onnx.load(str(fp32)).graph.node if n.op_type == "Conv"][-1]
    from exporter.quantize.onnx_int8 import QuantSettings, quantize_onnx

    int8 = tmp_path / "excluded.onnx"
    quantize_onnx(
        fp32,
        int8,
        QuantSettings(float_nodes=(last_conv,)),
        calib_inputs=None,
        cache=tmp_path / "calib.json",
    )
    result = convert_onnx_file(int8, tmp_path / "m.tflite")
    assert result.precision == "int8" and result.float_fallback_ops == ["CONV_2D"]
    assert result.op_counts == {"CONV_2D": 2, "DEQUANTIZE": 1, "QUANTIZE": 1}
    x = np.random.default_rng(1).standard_normal((4, *CHW)).astype(np.float32)
    ref = ort_probe(int8, x)
    for resolver in ("xnnpack", "builtin"):
        got = TfliteRunner(result.path.read_bytes(), resolver)(x)
        assert np.abs(got - ref).max() <= 1e-4 * max(1.0, float(np.abs(ref).max()))
