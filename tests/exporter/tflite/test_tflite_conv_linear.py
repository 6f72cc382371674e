"""Parity of ONNX Conv / ConvTranspose / Gemm / MatMul against their TFLite lowering."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from tflite_testutil import check_parity, make_model

RNG = np.random.default_rng(1)
BOTH = ("xnnpack", "builtin")


def _w(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


# id, input NCHW, out channels, kernel, attributes, expected TFLite ops
CONV_CASES = [
    ("valid", (1, 3, 7, 5), 4, (3, 3), {}, {"CONV_2D": 1}),
    ("pad1_same", (1, 3, 7, 5), 4, (3, 3), {"pads": [1, 1, 1, 1]}, {"CONV_2D": 1}),
    (
        "s2_pad1_even_not_same",
        (1, 3, 8, 6),
        4,
        (3, 3),
        {"strides": [2, 2], "pads": [1, 1, 1, 1]},
        {"PAD": 1, "CONV_2D": 1},
    ),
    (
        "s2_tflite_same",
        (1, 3, 8, 6),
        4,
        (3, 3),
        {"strides": [2, 2], "pads": [0, 0, 1, 1]},
        {"CONV_2D": 1},
    ),
    (
        "s2_pad1_odd_same",
        (1, 3, 7, 5),
        4,
        (3, 3),
        {"strides": [2, 2], "pads": [1, 1, 1, 1]},
        {"CONV_2D": 1},
    ),
    ("asym_pads", (1, 3, 7, 5), 4, (3, 2), {"pads": [0, 1, 2, 0]}, {"PAD": 1, "CONV_2D": 1}),
    (
        "rect_stride",
        (1, 3, 9, 7),
        5,
        (3, 1),
        {"strides": [2, 1], "pads": [1, 0, 1, 0]},
        {"CONV_2D": 1},
    ),
    (
        "dilation2_same",
        (1, 3, 9, 8),
        4,
        (3, 3),
        {"dilations": [2, 2], "pads": [2, 2, 2, 2]},
        {"CONV_2D": 1},
    ),
    ("dilation_hw", (1, 3, 9, 8), 4, (3, 3), {"dilations": [2, 1]}, {"CONV_2D": 1}),
    (
        "depthwise",
        (1, 6, 7, 5),
        6,
        (3, 3),
        {"group": 6, "pads": [1, 1, 1, 1]},
        {"DEPTHWISE_CONV_2D": 1},
    ),
    (
        "depthwise_mult2_s2",
        (1, 3, 7, 5),
        6,
        (3, 3),
        {"group": 3, "strides": [2, 2]},
        {"DEPTHWISE_CONV_2D": 1},
    ),
    (
        "depthwise_s2_pad",
        (1, 4, 8, 6),
        4,
        (3, 3),
        {"group": 4, "strides": [2, 2], "pads": [1, 1, 1, 1]},
        {"PAD": 1, "DEPTHWISE_CONV_2D": 1},
    ),
    ("groups2", (1, 4, 7, 5), 6, (3, 3), {"group": 2, "pads": [1, 1, 1, 1]}, {"CONV_2D": 1}),
    ("pointwise", (1, 5, 4, 6), 3, (1, 1), {}, {"CONV_2D": 1}),
    (
        "auto_same_upper",
        (1, 3, 8, 6),
        4,
        (3, 3),
        {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
        {"CONV_2D": 1},
    ),
    (
        "auto_same_lower",
        (1, 3, 8, 6),
        4,
        (3, 3),
        {"auto_pad": "SAME_LOWER", "strides": [2, 2]},
        {"PAD": 1, "CONV_2D": 1},
    ),
]


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize(
    ("case", "shape", "out_c", "kernel", "attrs", "ops"), CONV_CASES, ids=[c[0] for c in CONV_CASES]
)
def test_conv(case, shape, out_c, kernel, attrs, ops, bias):
    group = attrs.get("group", 1)
    inits = {"w": _w(out_c, shape[1] // group, *kernel)}
    if bias:
        inits["b"] = _w(out_c)
    node = helper.make_node(
        "Conv", ["x", "w"] + (["b"] if bias else []), ["y"], kernel_shape=list(kernel), **attrs
    )
    check_parity(make_model([node], {"x": shape}, ["y"], inits), {"x": shape}, ops, BOTH)


@pytest.mark.parametrize(
    ("attrs", "ops"),
    [
        ({"strides": [2, 2]}, {"TRANSPOSE_CONV": 1}),
        (
            {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]},
            {"TRANSPOSE_CONV": 1, "SLICE": 1},
        ),
        ({"strides": [1, 2], "pads": [1, 0, 1, 0]}, {"TRANSPOSE_CONV": 1, "SLICE": 1}),
    ],
    ids=["s2", "s2_pads_outpad", "rect"],
)
def test_conv_transpose(attrs, ops):
    shape = (1, 4, 5, 6)
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], kernel_shape=[3, 3], **attrs)
    model = make_model([node], {"x": shape}, ["y"], {"w": _w(4, 3, 3, 3), "b": _w(3)})
    check_parity(model, {"x": shape}, ops, BOTH)


GEMM_CASES = [
    ("transB1", {"transB": 1}, (5, 7), (5,), {"FULLY_CONNECTED": 1}),
    ("transB0", {}, (7, 5), (5,), {"FULLY_CONNECTED": 1}),
    (
        "alpha_beta",
        {"alpha": 0.5, "beta": 2.0, "transB": 1},
        (5, 7),
        (1, 5),
        {"FULLY_CONNECTED": 1},
    ),
    ("no_c", {"transB": 1}, (5, 7), None, {"FULLY_CONNECTED": 1}),
    ("per_row_c", {"beta": 0.5}, (7, 5), (3, 5), {"FULLY_CONNECTED": 1, "ADD": 1}),
]


@pytest.mark.parametrize(
    ("case", "attrs", "b_shape", "c_shape", "ops"), GEMM_CASES, ids=[c[0] for c in GEMM_CASES]
)
def test_gemm(case, attrs, b_shape, c_shape, ops):
    inits = {"B": _w(*b_shape)}
    ins = ["a", "B"]
    if c_shape:
        inits["C"] = _w(*c_shape)
        ins.append("C")
    model = make_model([helper.make_node("Gemm", ins, ["y"], **attrs)], {"a": (3, 7)}, ["y"], inits)
    check_parity(model, {"a": (3, 7)}, ops, BOTH)


def test_matmul_add_folds_into_fc_bias():
    nodes = [
        helper.make_node("MatMul", ["a", "B"], ["m"]),
        helper.make_node("Add", ["m", "c"], ["y"]),
    ]
    model = make_model(nodes, {"a": (3, 7)}, ["y"], {"B": _w(7, 5), "c": _w(5)})
    check_parity(model, {"a": (3, 7)}, {"FULLY_CONNECTED": 1}, BOTH)


def test_matmul_rank3_keeps_dims():
    model = make_model(
        [helper.make_node("MatMul", ["a", "B"], ["y"])], {"a": (2, 3, 7)}, ["y"], {"B": _w(7, 5)}
    )
    check_parity(model, {"a": (2, 3, 7)}, {"FULLY_CONNECTED": 1}, BOTH)


def test_matmul_two_activations_is_batch_matmul():
    model = make_model(
        [helper.make_node("MatMul", ["a", "b"], ["y"])], {"a": (2, 3, 7), "b": (2, 7, 4)}, ["y"]
    )
    check_parity(model, {"a": (2, 3, 7), "b": (2, 7, 4)}, {"BATCH_MATMUL": 1}, BOTH)


def test_conv_relu_fuses():
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    model = make_model(nodes, {"x": (1, 3, 7, 5)}, ["y"], {"w": _w(4, 3, 3, 3), "b": _w(4)})
    check_parity(model, {"x": (1, 3, 7, 5)}, {"CONV_2D": 1}, BOTH)
