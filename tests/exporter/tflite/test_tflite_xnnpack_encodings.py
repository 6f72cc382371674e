"""Encodings chosen so LiteRT's XNNPACK delegate takes the whole graph, each checked for exact
numbers: max-pool padding (zero PAD after a ReLU, repeated edges otherwise, never PADV2),
hard-sigmoid as relu6(x + 3) / 6 (no RELU_0_TO_1), AveragePool ceil_mode, no-op pools."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from onnx import helper
from tflite_testutil import check_parity, make_model
from torch import nn
from xnnpack_testutil import fp32_parity, int8_agreement, outside_xnnpack

from exporter.tflite import convert_model
from tests.helpers import randomize_batchnorm

BOTH = ("xnnpack", "builtin")


def _stem() -> nn.Module:
    """ResNet's stem: conv 7x7/2, BN, ReLU, max-pool 3x3/2 pad 1 (an even map: not TFLite SAME)."""
    torch.manual_seed(0)
    return randomize_batchnorm(
        nn.Sequential(nn.Conv2d(3, 8, 7, 2, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
    )


def test_resnet_stem_fp32_zero_pad_fully_delegated(tmp_path):
    out = fp32_parity(_stem(), (3, 32, 32), tmp_path)
    assert "PADV2" not in out.ops and out.ops["PAD"] == 2  # conv's pad and the pool's pad
    assert outside_xnnpack(out.data) == []


def test_resnet_stem_int8_fully_delegated(tmp_path):
    out = int8_agreement(_stem(), (3, 32, 32), tmp_path)
    assert out.stats["float_fallback_ops"] == [] and "PADV2" not in out.ops
    assert outside_xnnpack(out.data) == []


def test_max_pool_of_signed_input_repeats_edges(tmp_path):
    """No ReLU in front: zero padding could win a window of negatives, so edges are repeated."""
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.MaxPool2d(3, 2, 1))
    out = fp32_parity(module, (3, 16, 12), tmp_path)
    assert "PADV2" not in out.ops and "PAD" not in out.ops
    assert out.ops["SLICE"] == 4 and out.ops["CONCATENATION"] == 2
    assert outside_xnnpack(out.data) == []
    q = int8_agreement(module, (3, 16, 12), tmp_path / "int8")
    assert q.stats["float_fallback_ops"] == [] and outside_xnnpack(q.data) == []


def test_max_pool_all_negative_border_is_exact():
    """Every value negative: a zero PAD would give 0 on the border; repeated edges stay exact."""
    shape = (1, 2, 6, 6)
    model = make_model(
        [
            helper.make_node(
                "MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4
            )
        ],
        {"x": shape},
        ["y"],
    )
    x = -np.random.default_rng(0).uniform(1.0, 2.0, shape).astype(np.float32)
    check_parity(
        model,
        {"x": shape},
        {"SLICE": 4, "CONCATENATION": 2, "MAX_POOL_2D": 1},
        BOTH,
        feeds={"x": x},
    )


def test_max_pool_ceil_mode_repeats_edges():
    shape = (1, 2, 7, 6)
    node = helper.make_node(
        "MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4, ceil_mode=1
    )
    model = make_model([node], {"x": shape}, ["y"])
    counts = check_parity(model, {"x": shape}, None, BOTH)
    assert "PADV2" not in counts


class SqueezeExcite(nn.Module):
    """mobilenet_v3's inverted-residual tail: hard-swish, then SE with a hard-sigmoid gate."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.fc1, self.fc2 = nn.Conv2d(c, 4, 1), nn.Conv2d(4, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.hardswish(self.bn(self.conv(x)))
        gate = F.hardsigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(y, 1)))))
        return y * gate


def _se() -> nn.Module:
    torch.manual_seed(0)
    return randomize_batchnorm(SqueezeExcite())


def test_squeeze_excite_fp32_fully_delegated(tmp_path):
    out = fp32_parity(_se(), (3, 12, 10), tmp_path)
    assert "RELU_0_TO_1" not in out.ops and out.ops["HARD_SWISH"] == 1
    # The gate's conv absorbs the ADD 3 and the RELU6; only the MUL by 1/6 is left of it.
    assert out.ops == {"CONV_2D": 3, "HARD_SWISH": 1, "MEAN": 1, "MUL": 2}
    assert outside_xnnpack(out.data) == []


def test_squeeze_excite_int8_fully_delegated(tmp_path):
    # The gate and the features each round once; they meet in the final MUL: 2 steps.
    out = int8_agreement(_se(), (3, 12, 10), tmp_path, probe="HardSigmoid", lsb=2.0)
    # XNNPACK has no int8 HARD_SWISH: it runs in float between DEQUANTIZE and QUANTIZE.
    assert out.stats["float_fallback_ops"] == ["HARD_SWISH"] and "RELU_0_TO_1" not in out.ops
    assert outside_xnnpack(out.data) == []


def test_squeeze_excite_int8_for_builtin_kernels(tmp_path):
    out = int8_agreement(_se(), (3, 12, 10), tmp_path, "HardSigmoid", 2.0, delegate="none")
    assert out.stats["float_fallback_ops"] == [] and out.ops["HARD_SWISH"] == 1
    assert outside_xnnpack(out.data) == ["HARD_SWISH"]


@pytest.mark.parametrize(("alpha", "beta"), [(1 / 6, 0.5), (0.2, 0.5), (0.5, 0.25)])
def test_hard_sigmoid_alpha_beta(alpha, beta):
    shape = (1, 3, 5, 4)
    model = make_model(
        [helper.make_node("HardSigmoid", ["x"], ["y"], alpha=alpha, beta=beta)], {"x": shape}, ["y"]
    )
    x = np.random.default_rng(0).uniform(-6, 6, shape).astype(np.float32)
    counts = check_parity(model, {"x": shape}, None, BOTH, feeds={"x": x})
    assert "RELU_0_TO_1" not in counts
    data, _ = convert_model(model)
    assert outside_xnnpack(data) == []


AVG_CEIL = [
    # id, input shape, attributes, expected ops
    (
        "k2s2_odd_excl_same",
        (1, 3, 7, 5),
        dict(kernel_shape=[2, 2], strides=[2, 2]),
        {"AVERAGE_POOL_2D": 1},
    ),
    (
        "k2s2_odd_incl_no_pads",
        (1, 3, 7, 5),
        dict(kernel_shape=[2, 2], strides=[2, 2], count_include_pad=1),
        {"AVERAGE_POOL_2D": 1},
    ),
    (
        "k3s2_pad1_incl",
        (1, 3, 8, 6),
        dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1),
        {"PAD": 1, "AVERAGE_POOL_2D": 1, "MUL": 1},
    ),
    (
        "k3s2_pad1_excl",
        (1, 3, 8, 6),
        dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        {"PAD": 1, "AVERAGE_POOL_2D": 1, "MUL": 1},
    ),
    (
        "k3s3_asym_incl",
        (1, 3, 8, 7),
        dict(kernel_shape=[3, 3], strides=[3, 3], pads=[0, 1, 0, 0], count_include_pad=1),
        {"PAD": 1, "AVERAGE_POOL_2D": 1, "MUL": 1},
    ),
]


@pytest.mark.parametrize(("case", "shape", "attrs", "ops"), AVG_CEIL, ids=[c[0] for c in AVG_CEIL])
def test_average_pool_ceil_mode(case, shape, attrs, ops):
    node = helper.make_node("AveragePool", ["x"], ["y"], ceil_mode=1, **attrs)
    model = make_model([node], {"x": shape}, ["y"])
    check_parity(model, {"x": shape}, ops, BOTH)
    data, _ = convert_model(model)
    assert outside_xnnpack(data) == []


def _resnet_d_down() -> nn.Module:
    """ResNet-D shortcut: avg-pool 2x2/2 (ceil_mode, count_include_pad=False), then 1x1 conv."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False),
        nn.Conv2d(6, 8, 1),
    )


def test_resnet_d_avg_pool_ceil_fp32(tmp_path):
    out = fp32_parity(_resnet_d_down(), (3, 9, 7), tmp_path)
    assert out.ops == {"CONV_2D": 2, "AVERAGE_POOL_2D": 1}  # SAME is exact here
    assert outside_xnnpack(out.data) == []


def test_int8_average_pool_is_a_depthwise_conv(tmp_path):
    """XNNPACK has no int8 AVERAGE_POOL_2D: an unpadded one is written as DEPTHWISE_CONV_2D."""
    # The 1x1 conv after the pool may turn a 1-step difference into 2.
    q = int8_agreement(_resnet_d_down(), (3, 8, 6), tmp_path, "AveragePool", lsb=2.0)
    assert q.ops == {"CONV_2D": 2, "DEPTHWISE_CONV_2D": 1, "QUANTIZE": 1, "DEQUANTIZE": 1}
    assert q.stats["float_fallback_ops"] == [] and outside_xnnpack(q.data) == []


@pytest.mark.parametrize("delegate", ["xnnpack", "none"])
def test_int8_padded_average_pool_stays_a_pool(delegate, tmp_path):
    """A ceil-mode window over padding must leave the padding out of its count: only the pool
    does that in one op. XNNPACK has no int8 pool, so for it the pool runs in float."""
    q = int8_agreement(_resnet_d_down(), (3, 9, 7), tmp_path, "AveragePool", 2.0, delegate)
    assert q.ops["AVERAGE_POOL_2D"] == 1
    if delegate == "xnnpack":
        assert q.stats["float_fallback_ops"] == ["AVERAGE_POOL_2D"]
        assert outside_xnnpack(q.data) == []
    else:
        assert q.stats["float_fallback_ops"] == []
        assert outside_xnnpack(q.data) == ["AVERAGE_POOL_2D"]


class NoOpPool(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return F.avg_pool2d(y, 1) + F.max_pool2d(y, 1)


def test_one_by_one_pools_are_dropped(tmp_path):
    """A 1x1 stride-1 pool copies its input; XNNPACK refuses an int8 1x1 AVERAGE_POOL_2D."""
    out = fp32_parity(NoOpPool(), (3, 6, 5), tmp_path)
    assert out.ops == {"CONV_2D": 1, "ADD": 1}
    q = int8_agreement(NoOpPool(), (3, 6, 5), tmp_path / "int8")
    assert "AVERAGE_POOL_2D" not in q.ops and "MAX_POOL_2D" not in q.ops
    assert outside_xnnpack(q.data) == []


@pytest.mark.parametrize(
    ("alpha", "ops"),
    # Only torch's hard-sigmoid fuses; another one's 6a * x + 6b is a 1x1 depthwise conv.
    [(1 / 6, {"HARD_SWISH": 1}), (0.2, {"DEPTHWISE_CONV_2D": 1, "MUL": 2})],
)
def test_x_times_hard_sigmoid_of_x(alpha, ops):
    shape = (1, 3, 5, 4)
    nodes = [
        helper.make_node("HardSigmoid", ["x"], ["h"], alpha=alpha, beta=0.5),
        helper.make_node("Mul", ["h", "x"], ["y"]),
    ]
    model = make_model(nodes, {"x": shape}, ["y"])
    x = np.random.default_rng(0).uniform(-6, 6, shape).astype(np.float32)
    check_parity(model, {"x": shape}, ops, BOTH, feeds={"x": x})
    assert outside_xnnpack(convert_model(model)[0]) == []


class HandWrittenHardSwish(NoOpPool):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y * F.hardsigmoid(y)


def test_hand_written_hard_swish_block_int8(tmp_path):
    """``x * hardsigmoid(x)`` written out in torch becomes one HARD_SWISH, in int8 too."""
    torch.manual_seed(0)
    module = HandWrittenHardSwish()
    out = fp32_parity(module, (3, 6, 5), tmp_path)
    assert out.ops == {"CONV_2D": 1, "HARD_SWISH": 1}
    q = int8_agreement(module, (3, 6, 5), tmp_path / "int8", delegate="none")
    assert q.ops["HARD_SWISH"] == 1 and q.stats["float_fallback_ops"] == []


@pytest.mark.parametrize(("n", "concats"), [(5, 1), (6, 2), (12, 4), (26, 7)])
def test_wide_concat_is_split_for_xnnpack(n, concats):
    """XNNPACK takes at most 5 inputs per CONCATENATION: wider ones become a tree of them."""
    shape = (1, 2, 4, 3)
    nodes = [helper.make_node("Relu", [f"x{i}"], [f"r{i}"]) for i in range(n)]
    nodes.append(helper.make_node("Concat", [f"r{i}" for i in range(n)], ["y"], axis=1))
    inputs = {f"x{i}": shape for i in range(n)}
    model = make_model(nodes, inputs, ["y"])
    counts = check_parity(model, inputs, None, BOTH)
    assert counts["CONCATENATION"] == concats
    assert outside_xnnpack(convert_model(model)[0]) == []


class DenseBlock(nn.Module):
    """DenseNet's pattern: each layer reads the concatenation of every earlier map."""

    def __init__(self, layers: int = 6, growth: int = 2) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(3 + i * growth, growth, 3, padding=1) for i in range(layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = [x]
        for conv in self.convs:
            maps.append(F.relu(conv(torch.cat(maps, 1))))
        return torch.cat(maps, 1)


def test_dense_block_int8_fully_delegated(tmp_path):
    torch.manual_seed(0)
    out = fp32_parity(DenseBlock(), (3, 6, 5), tmp_path)
    assert outside_xnnpack(out.data) == []
    q = int8_agreement(DenseBlock(), (3, 6, 5), tmp_path / "int8", lsb=2.0)
    assert q.stats["float_fallback_ops"] == [] and outside_xnnpack(q.data) == []


class PreActivation(nn.Module):
    """DenseNet's layer: BatchNorm + ReLU on a concatenation, with no conv to fold into."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn, self.conv2 = (
            nn.Conv2d(3, 4, 3, padding=1),
            nn.BatchNorm2d(7),
            nn.Conv2d(7, 5, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.bn(torch.cat([self.conv1(x), x], 1))))


def _pre_activation() -> nn.Module:
    torch.manual_seed(0)
    return randomize_batchnorm(PreActivation())


def test_standalone_batch_norm_is_an_int8_depthwise_conv(tmp_path):
    """ONNX never quantizes the BN's MUL result, which kept MUL + ADD in float; as one 1x1
    DEPTHWISE_CONV_2D (per-channel multiplier stored exactly) it is integer and delegated."""
    out = fp32_parity(_pre_activation(), (3, 8, 6), tmp_path)
    assert out.ops == {"CONCATENATION": 1, "CONV_2D": 2, "DEPTHWISE_CONV_2D": 1}
    # The concat requantizes the input (one rounding ORT does not make), which the BN can
    # stretch to 2 steps; the BN alone is probed below.
    q = int8_agreement(_pre_activation(), (3, 8, 6), tmp_path / "int8", lsb=2.0)
    assert q.stats["float_fallback_ops"] == [] and q.ops["DEPTHWISE_CONV_2D"] == 1
    assert outside_xnnpack(q.data) == []


def test_batch_norm_on_the_input_int8_within_one_step(tmp_path):
    torch.manual_seed(0)
    module = randomize_batchnorm(nn.Sequential(nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 4, 1)))
    q = int8_agreement(module, (3, 8, 6), tmp_path, "BatchNormalization", 2.0)
    assert q.stats["float_fallback_ops"] == [] and q.ops["DEPTHWISE_CONV_2D"] == 1
