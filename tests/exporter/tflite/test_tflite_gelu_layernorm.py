"""GELU (ONNX Gelu, and torch's Erf / tanh sub-graphs fused into TFLite GELU), LayerNormalization
(and the decomposed form) against onnxruntime, and XNNPACK taking each whole."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from onnx import helper
from tflite_testutil import check_parity, make_model
from torch import nn
from xnnpack_testutil import fp32_parity, int8_agreement, outside_xnnpack

from exporter.errors import UnsupportedOpsError
from exporter.tflite import convert_model

BOTH = ("xnnpack", "builtin")
X = (1, 4, 5, 6)


def _c(value: float) -> np.ndarray:
    return np.asarray(value, np.float32)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_onnx_gelu_op(approximate):
    node = helper.make_node("Gelu", ["x"], ["y"], approximate=approximate)
    model = make_model([node], {"x": X}, ["y"], opset=20)
    check_parity(model, {"x": X}, {"GELU": 1}, BOTH)
    assert outside_xnnpack(convert_model(model)[0]) == []


def _erf_nodes(scale_op: str, half_first: bool) -> list:
    scale = (
        helper.make_node("Div", ["x", "sqrt2"], ["s"])
        if scale_op == "Div"
        else helper.make_node("Mul", ["inv_sqrt2", "x"], ["s"])
    )
    nodes = [
        scale,
        helper.make_node("Erf", ["s"], ["e"]),
        helper.make_node("Add", ["one", "e"], ["a"]),
    ]
    if half_first:
        return [
            helper.make_node("Mul", ["x", "half"], ["h"]),
            *nodes,
            helper.make_node("Mul", ["h", "a"], ["y"]),
        ]
    return [
        *nodes,
        helper.make_node("Mul", ["x", "a"], ["m"]),
        helper.make_node("Mul", ["m", "half"], ["y"]),
    ]


CONSTS = {
    "sqrt2": _c(math.sqrt(2)),
    "inv_sqrt2": _c(1 / math.sqrt(2)),
    "one": _c(1.0),
    "half": _c(0.5),
    "k": _c(math.sqrt(2 / math.pi)),
    "c": _c(0.044715),
    "three": _c(3.0),
}


@pytest.mark.parametrize(
    ("scale_op", "half_first"), [("Div", False), ("Mul", False), ("Div", True), ("Mul", True)]
)
def test_erf_gelu_pattern_is_fused(scale_op, half_first):
    model = make_model(_erf_nodes(scale_op, half_first), {"x": X}, ["y"], CONSTS)
    check_parity(model, {"x": X}, {"GELU": 1}, BOTH)


@pytest.mark.parametrize("cube", ["pow", "mul"])
def test_tanh_gelu_pattern_is_fused(cube):
    cubed = (
        [helper.make_node("Pow", ["x", "three"], ["x3"])]
        if cube == "pow"
        else [
            helper.make_node("Mul", ["x", "x"], ["x2"]),
            helper.make_node("Mul", ["x2", "x"], ["x3"]),
        ]
    )
    nodes = [
        *cubed,
        helper.make_node("Mul", ["c", "x3"], ["t"]),
        helper.make_node("Add", ["x", "t"], ["inner"]),
        helper.make_node("Mul", ["k", "inner"], ["arg"]),
        helper.make_node("Tanh", ["arg"], ["th"]),
        helper.make_node("Add", ["th", "one"], ["a"]),
        helper.make_node("Mul", ["half", "a"], ["m"]),
        helper.make_node("Mul", ["x", "m"], ["y"]),
    ]
    model = make_model(nodes, {"x": X}, ["y"], CONSTS)
    check_parity(model, {"x": X}, {"GELU": 1}, BOTH)
    data, _ = convert_model(model)
    assert outside_xnnpack(data) == []


def test_erf_read_outside_the_pattern_is_refused_in_one_line():
    """The Erf value is also a graph output, so the GELU cannot absorb it: a clear refusal."""
    model = make_model(_erf_nodes("Div", False), {"x": X}, ["y", "e"], CONSTS)
    with pytest.raises(UnsupportedOpsError) as err:
        convert_model(model)
    assert [o[1] for o in err.value.offenders] == ["Erf"]
    assert "TFLite has no ERF" in str(err.value) and "GELU" in str(err.value)
    assert "\n" not in err.value.offenders[0][2]


def test_tanh_not_in_a_gelu_stays_tanh():
    nodes = [
        helper.make_node("Mul", ["x", "k"], ["arg"]),
        helper.make_node("Tanh", ["arg"], ["th"]),
        helper.make_node("Add", ["th", "one"], ["y"]),
    ]
    model = make_model(nodes, {"x": X}, ["y"], CONSTS)
    check_parity(model, {"x": X}, {"MUL": 1, "TANH": 1, "ADD": 1}, BOTH)


class GeluBlock(nn.Module):
    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 6, 1)
        self.act = nn.GELU(approximate=approximate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act(self.conv1(x)))


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_torch_gelu_block_fp32(approximate, tmp_path):
    torch.manual_seed(0)
    out = fp32_parity(GeluBlock(approximate), (3, 10, 8), tmp_path)
    assert out.ops == {"CONV_2D": 2, "GELU": 1}
    assert outside_xnnpack(out.data) == []


@pytest.mark.parametrize("delegate", ["xnnpack", "none"])
def test_torch_gelu_block_int8(delegate, tmp_path):
    torch.manual_seed(0)
    out = int8_agreement(GeluBlock(), (3, 10, 8), tmp_path, delegate=delegate)
    assert out.ops.get("GELU") == 1
    if delegate == "xnnpack":  # no int8 GELU in XNNPACK: float between DEQUANTIZE / QUANTIZE
        assert out.stats["float_fallback_ops"] == ["GELU"] and outside_xnnpack(out.data) == []
    else:
        assert out.stats["float_fallback_ops"] == [] and outside_xnnpack(out.data) == ["GELU"]


def _ln_inits(shape: tuple[int, ...], axis: int, affine: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    norm_shape = shape[axis:]
    inits = {
        "scale": rng.uniform(0.5, 1.5, norm_shape).astype(np.float32)
        if affine
        else np.ones(norm_shape, np.float32),
        "bias": rng.uniform(-0.5, 0.5, norm_shape).astype(np.float32)
        if affine
        else np.zeros(norm_shape, np.float32),
    }
    return inits


LN_CASES = [
    # id, input shape, axis, a conv in front (NHWC input), affine
    ("rank3_last", (1, 6, 8), -1, False, True),
    ("rank3_last_plain", (1, 6, 8), -1, False, False),
    ("nhwc_channels_hw", (1, 3, 5, 4), 1, True, True),
    ("nhwc_last_axis", (1, 3, 5, 4), -1, True, True),
    ("nhwc_hw", (1, 3, 5, 4), 2, True, False),
]


@pytest.mark.parametrize(
    ("case", "shape", "axis", "conv", "affine"), LN_CASES, ids=[c[0] for c in LN_CASES]
)
def test_layer_normalization_op(case, shape, axis, conv, affine):
    inits = _ln_inits(shape, axis, affine)
    nodes = [helper.make_node("LayerNormalization", ["h", "scale", "bias"], ["y"], axis=axis)]
    if conv:
        c = shape[1]
        inits["w"] = np.random.default_rng(1).standard_normal((c, 2, 1, 1)).astype(np.float32)
        nodes.insert(0, helper.make_node("Conv", ["x", "w"], ["h"]))
        inputs = {"x": (1, 2, *shape[2:])}
    else:
        nodes[0].input[0] = "x"
        inputs = {"x": shape}
    model = make_model(nodes, inputs, ["y"], inits, opset=18)
    counts = check_parity(model, inputs, None, BOTH)
    assert counts["MEAN"] == 2 and counts["RSQRT"] == 1 and "TRANSPOSE" not in counts
    assert (counts["MUL"], counts["ADD"]) == ((3, 2) if affine else (2, 1))
    assert outside_xnnpack(convert_model(model)[0]) == []


class ChannelsLastLayerNorm(nn.Module):
    """ConvNeXt's block: LayerNorm over channels after a permute to channels-last."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.LayerNorm(8)
        with torch.no_grad():
            self.norm.weight.uniform_(0.5, 1.5)
            self.norm.bias.uniform_(-0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def test_channels_last_layer_norm_block_fp32(tmp_path):
    torch.manual_seed(0)
    out = fp32_parity(ChannelsLastLayerNorm(), (3, 9, 7), tmp_path)
    # The two permutes only relabel the NHWC tensor: no TRANSPOSE, the means reduce axis 3;
    # the per-channel scale and bias are one 1x1 depthwise conv.
    assert out.ops == {
        "CONV_2D": 1,
        "MEAN": 2,
        "SUB": 1,
        "MUL": 2,
        "ADD": 1,
        "RSQRT": 1,
        "DEPTHWISE_CONV_2D": 1,
    }
    assert outside_xnnpack(out.data) == []


def test_channels_last_layer_norm_block_int8(tmp_path):
    """onnxruntime computes LayerNormalization in float between DQ and Q; so does the TFLite
    graph (a float island the report lists), XNNPACK still taking every op."""
    torch.manual_seed(0)
    # LN divides by the channel std: a 1-step difference in the conv's int8 output (builtin
    # kernel vs ORT) can come out as 2 steps.
    out = int8_agreement(ChannelsLastLayerNorm(), (3, 9, 7), tmp_path, lsb=2.0)
    assert "TRANSPOSE" not in out.ops and "RSQRT" in out.stats["float_fallback_ops"]
    assert outside_xnnpack(out.data) == []


class DecomposedLayerNorm(nn.Module):
    """ConvNeXt's reference channels-first LayerNorm, written out (ReduceMean, Sub, Pow, ...)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, 8))
        self.bias = nn.Parameter(torch.linspace(-0.5, 0.5, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + 1e-6)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


def test_decomposed_layer_norm_fp32(tmp_path):
    torch.manual_seed(0)
    out = fp32_parity(DecomposedLayerNorm(), (3, 9, 7), tmp_path)
    assert "POW" not in out.ops and "TRANSPOSE" not in out.ops
    assert outside_xnnpack(out.data) == []
