"""Parity of layout-sensitive ops: reshapes, Transpose, Concat, Pad, Softmax, reductions, Resize, BN."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from tflite_testutil import check_parity, make_model

RNG = np.random.default_rng(3)
X = (1, 3, 7, 5)
BOTH = ("xnnpack", "builtin")


def _i64(*values: int) -> np.ndarray:
    return np.asarray(values, np.int64)


def test_flatten_then_gemm_permutes_weights_instead_of_transposing():
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"]),
        helper.make_node("Gemm", ["f", "w", "b"], ["y"], transB=1),
    ]
    inits = {
        "w": RNG.standard_normal((4, 105)).astype(np.float32),
        "b": RNG.standard_normal(4).astype(np.float32),
    }
    model = make_model(nodes, {"x": X}, ["y"], inits)
    check_parity(model, {"x": X}, {"RESHAPE": 1, "FULLY_CONNECTED": 1}, BOTH)


def test_reshape_then_matmul_add():
    nodes = [
        helper.make_node("Reshape", ["x", "s"], ["f"]),
        helper.make_node("MatMul", ["f", "w"], ["m"]),
        helper.make_node("Add", ["m", "b"], ["y"]),
    ]
    inits = {
        "s": _i64(1, -1),
        "w": RNG.standard_normal((105, 4)).astype(np.float32),
        "b": np.ones(4, np.float32),
    }
    check_parity(
        make_model(nodes, {"x": X}, ["y"], inits),
        {"x": X},
        {"RESHAPE": 1, "FULLY_CONNECTED": 1},
        BOTH,
    )


# target shape, whether a TRANSPOSE is unavoidable
RESHAPES = [
    ((1, 105), 1),  # a graph output must be in ONNX order
    ((1, 3, 35), 1),
    ((3, 7, 5), 1),
    ((1, 3, 5, 7), 2),  # mixes H and W: back to NCHW, reshape, then NHWC for the output
]


@pytest.mark.parametrize(("target", "transposes"), RESHAPES, ids=str)
def test_reshape_to_output(target, transposes):
    model = make_model(
        [helper.make_node("Reshape", ["x", "s"], ["y"])], {"x": X}, ["y"], {"s": _i64(*target)}
    )
    counts = check_parity(model, {"x": X})
    assert counts.get("TRANSPOSE", 0) == transposes


def test_channel_only_reshape_is_free():
    # [1, C, 1, 1] and [1, C] share memory order in NCHW and NHWC.
    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["g"]),
        helper.make_node("Squeeze", ["g", "ax"], ["q"]),
        helper.make_node("Unsqueeze", ["q", "ax"], ["u"]),
        helper.make_node("Mul", ["x", "u"], ["y"]),
    ]
    model = make_model(nodes, {"x": X}, ["y"], {"ax": _i64(2, 3)})
    check_parity(model, {"x": X}, {"MEAN": 1, "RESHAPE": 2, "MUL": 1})


@pytest.mark.parametrize("axis", [0, 1, 2, 3, -1])
def test_flatten_axes(axis):
    model = make_model([helper.make_node("Flatten", ["x"], ["y"], axis=axis)], {"x": X}, ["y"])
    check_parity(model, {"x": X})


@pytest.mark.parametrize("perm", [(0, 2, 3, 1), (0, 1, 3, 2), (0, 3, 1, 2), (3, 2, 1, 0)], ids=str)
def test_transpose(perm):
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=list(perm)),
        helper.make_node("Relu", ["t"], ["y"]),
    ]
    check_parity(make_model(nodes, {"x": X}, ["y"]), {"x": X}, resolvers=BOTH)


def test_nchw_to_nhwc_transpose_then_reshape_is_free():
    # torch code that permutes to channels-last by hand: the data is already NHWC.
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["t", "s"], ["y"]),
    ]
    model = make_model(nodes, {"x": X}, ["y"], {"s": _i64(1, 35, 3)})
    check_parity(model, {"x": X}, {"RESHAPE": 1})


@pytest.mark.parametrize("axis", [1, 2, 3, -3, 0])
def test_concat(axis):
    other = list(X)
    other[axis] = 2 if axis != 0 else 1
    nodes = [helper.make_node("Concat", ["x", "z", "c"], ["y"], axis=axis)]
    c = RNG.standard_normal(other).astype(np.float32)
    model = make_model(nodes, {"x": X, "z": tuple(other)}, ["y"], {"c": c})
    counts = check_parity(model, {"x": X, "z": tuple(other)}, resolvers=BOTH)
    assert counts == {"CONCATENATION": 1}


def test_concat_rank2():
    model = make_model(
        [helper.make_node("Concat", ["a", "b"], ["y"], axis=-1)], {"a": (2, 3), "b": (2, 4)}, ["y"]
    )
    check_parity(model, {"a": (2, 3), "b": (2, 4)}, {"CONCATENATION": 1})


@pytest.mark.parametrize(
    ("pads", "value", "tfl"),
    [((0, 0, 1, 2, 0, 0, 3, 0), 0.0, "PAD"), ((0, 1, 0, 0, 0, 2, 1, 1), 0.5, "PADV2")],
    ids=["zero_hw", "value_chw"],
)
def test_pad(pads, value, tfl):
    inits = {"p": _i64(*pads), "v": np.float32(value)}
    model = make_model(
        [helper.make_node("Pad", ["x", "p", "v"], ["y"], mode="constant")], {"x": X}, ["y"], inits
    )
    check_parity(model, {"x": X}, {tfl: 1}, BOTH)


def test_pad_with_axes_input():
    inits = {"p": _i64(1, 2, 3, 0), "ax": _i64(-1, 2)}
    model = make_model(
        [helper.make_node("Pad", ["x", "p", "", "ax"], ["y"])], {"x": X}, ["y"], inits
    )
    check_parity(model, {"x": X}, {"PAD": 1})


@pytest.mark.parametrize(
    ("shape", "axis", "transposes"),
    [((2, 7), -1, 0), (X, 1, 0), (X, -1, 2), ((2, 3, 5), 2, 0)],
    ids=str,
)
def test_softmax(shape, axis, transposes):
    model = make_model([helper.make_node("Softmax", ["x"], ["y"], axis=axis)], {"x": shape}, ["y"])
    counts = check_parity(model, {"x": shape})
    assert counts.get("TRANSPOSE", 0) == transposes


REDUCES = [
    ((2, 3), 1),
    ((2, 3), 0),
    ((1,), 0),
    ((1,), 1),
    ((-1,), 0),
    ((-2, -1), 0),
    ((2,), 0),
    ((0, 1), 0),
    ((1, 3), 1),
]


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd"])
@pytest.mark.parametrize(("axes", "keepdims"), REDUCES, ids=str)
def test_reduce_axes_input(op, axes, keepdims):
    nodes = [helper.make_node(op, ["x", "ax"], ["y"], keepdims=keepdims)]
    check_parity(make_model(nodes, {"x": X}, ["y"], {"ax": _i64(*axes)}), {"x": X})


def test_reduce_mean_axes_attribute_opset13():
    nodes = [helper.make_node("ReduceMean", ["x"], ["y"], axes=[-1, 2], keepdims=0)]
    check_parity(make_model(nodes, {"x": X}, ["y"], opset=13), {"x": X}, {"MEAN": 1})


RESIZES = [
    (
        {
            "mode": "nearest",
            "coordinate_transformation_mode": "asymmetric",
            "nearest_mode": "floor",
        },
        (1, 1, 2, 2),
        "RESIZE_NEAREST_NEIGHBOR",
    ),
    (
        {
            "mode": "nearest",
            "coordinate_transformation_mode": "asymmetric",
            "nearest_mode": "floor",
        },
        (1, 1, 3, 2),
        "RESIZE_NEAREST_NEIGHBOR",
    ),
    (
        {
            "mode": "nearest",
            "coordinate_transformation_mode": "half_pixel",
            "nearest_mode": "round_prefer_ceil",
        },
        (1, 1, 2, 3),
        "RESIZE_NEAREST_NEIGHBOR",
    ),
    (
        {"mode": "linear", "coordinate_transformation_mode": "half_pixel"},
        (1, 1, 2, 2),
        "RESIZE_BILINEAR",
    ),
    (
        {"mode": "linear", "coordinate_transformation_mode": "pytorch_half_pixel"},
        (1, 1, 3, 2),
        "RESIZE_BILINEAR",
    ),
    (
        {"mode": "linear", "coordinate_transformation_mode": "align_corners"},
        (1, 1, 2, 2),
        "RESIZE_BILINEAR",
    ),
    (
        {"mode": "linear", "coordinate_transformation_mode": "asymmetric"},
        (1, 1, 2, 2),
        "RESIZE_BILINEAR",
    ),
]


@pytest.mark.parametrize(
    ("attrs", "scales", "tfl"),
    RESIZES,
    ids=[
        f"{r[0]['mode']}-{r[0]['coordinate_transformation_mode']}-{r[1][2]}x{r[1][3]}"
        for r in RESIZES
    ],
)
def test_resize(attrs, scales, tfl):
    inits = {"sc": np.asarray(scales, np.float32)}
    model = make_model(
        [helper.make_node("Resize", ["x", "", "sc"], ["y"], **attrs)], {"x": X}, ["y"], inits
    )
    check_parity(model, {"x": X}, {tfl: 1}, BOTH)


def test_resize_with_sizes_input():
    inits = {"sz": _i64(1, 3, 11, 13)}
    node = helper.make_node(
        "Resize",
        ["x", "", "", "sz"],
        ["y"],
        mode="linear",
        coordinate_transformation_mode="align_corners",
    )
    check_parity(make_model([node], {"x": X}, ["y"], inits), {"x": X}, {"RESIZE_BILINEAR": 1})


def _bn_inits(c: int) -> dict[str, np.ndarray]:
    return {
        "s": RNG.uniform(0.5, 1.5, c).astype(np.float32),
        "bb": RNG.standard_normal(c).astype(np.float32),
        "m": RNG.standard_normal(c).astype(np.float32),
        "v": RNG.uniform(0.5, 2.0, c).astype(np.float32),
    }


def test_batchnorm_standalone_is_one_depthwise_conv():
    """No conv to fold into: the per-channel MUL + ADD is one 1x1 DEPTHWISE_CONV_2D."""
    node = helper.make_node("BatchNormalization", ["x", "s", "bb", "m", "v"], ["y"], epsilon=1e-3)
    check_parity(
        make_model([node], {"x": X}, ["y"], _bn_inits(3)), {"x": X}, {"DEPTHWISE_CONV_2D": 1}, BOTH
    )


@pytest.mark.parametrize("group", [1, 4], ids=["conv", "depthwise"])
def test_batchnorm_after_conv_folds(group):
    nodes = [
        helper.make_node(
            "Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=group
        ),
        helper.make_node("BatchNormalization", ["c", "s", "bb", "m", "v"], ["n"]),
        helper.make_node("Relu", ["n"], ["y"]),
    ]
    shape = (1, 4, 7, 5)
    inits = {"w": RNG.standard_normal((4, 4 // group, 3, 3)).astype(np.float32), **_bn_inits(4)}
    tfl = "CONV_2D" if group == 1 else "DEPTHWISE_CONV_2D"
    check_parity(make_model(nodes, {"x": shape}, ["y"], inits), {"x": shape}, {tfl: 1}, BOTH)


def test_batchnorm_rank2():
    node = helper.make_node("BatchNormalization", ["x", "s", "bb", "m", "v"], ["y"])
    check_parity(
        make_model([node], {"x": (2, 3)}, ["y"], _bn_inits(3)), {"x": (2, 3)}, {"MUL": 1, "ADD": 1}
    )


def test_identity_and_dropout_vanish():
    nodes = [
        helper.make_node("Identity", ["x"], ["i"]),
        helper.make_node("Relu", ["i"], ["r"]),
        helper.make_node("Dropout", ["r"], ["d"]),
        helper.make_node("Sigmoid", ["d"], ["y"]),
    ]
    check_parity(make_model(nodes, {"x": X}, ["y"]), {"x": X}, {"RELU": 1, "LOGISTIC": 1})


def test_identity_as_graph_output():
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Identity", ["r"], ["y"])]
    check_parity(make_model(nodes, {"x": X}, ["y"]), {"x": X}, {"RELU": 1})
