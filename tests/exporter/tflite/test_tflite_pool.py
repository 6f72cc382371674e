"""Parity of ONNX pooling ops against MAX_POOL_2D / AVERAGE_POOL_2D / MEAN."""

from __future__ import annotations

import pytest
from onnx import helper
from tflite_testutil import check_parity, make_model

BOTH = ("xnnpack", "builtin")
SHAPE = (1, 3, 7, 5)
EVEN = (1, 3, 8, 6)

# id, input, attributes, expected ops (per op type)
MAX_CASES = [
    ("k2s2", EVEN, {"kernel_shape": [2, 2], "strides": [2, 2]}, {"MAX_POOL_2D": 1}),
    ("k3s1_pad1_same", SHAPE, {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, {"MAX_POOL_2D": 1}),
    (
        "k3s2_pad1_even",
        EVEN,
        {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
        # Edges repeated (XNNPACK takes SLICE + CONCATENATION, not PADV2).
        {"SLICE": 4, "CONCATENATION": 2, "MAX_POOL_2D": 1},
    ),
    ("k2s2_odd_floor", SHAPE, {"kernel_shape": [2, 2], "strides": [2, 2]}, {"MAX_POOL_2D": 1}),
    (
        "k2s2_ceil",
        SHAPE,
        {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1},
        {"MAX_POOL_2D": 1},
    ),
    (
        "k3s2_asym",
        SHAPE,
        {"kernel_shape": [3, 2], "strides": [2, 1], "pads": [0, 1, 1, 0]},
        {"SLICE": 2, "CONCATENATION": 2, "MAX_POOL_2D": 1},
    ),
]


@pytest.mark.parametrize(
    ("case", "shape", "attrs", "ops"), MAX_CASES, ids=[c[0] for c in MAX_CASES]
)
def test_max_pool(case, shape, attrs, ops):
    model = make_model([helper.make_node("MaxPool", ["x"], ["y"], **attrs)], {"x": shape}, ["y"])
    check_parity(model, {"x": shape}, ops, BOTH)


AVG_CASES = [
    ("k2s2", EVEN, {"kernel_shape": [2, 2], "strides": [2, 2]}, {"AVERAGE_POOL_2D": 1}),
    (
        "k3_pad1_excl_same",
        SHAPE,
        {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]},
        {"AVERAGE_POOL_2D": 1},
    ),
    (
        "k3_pad1_incl",
        SHAPE,
        {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1},
        {"PAD": 1, "AVERAGE_POOL_2D": 1},
    ),
    (
        "k3s2_pad1_even_excl",
        EVEN,
        {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
        {"PAD": 1, "AVERAGE_POOL_2D": 1, "MUL": 1},
    ),
    (
        "k3s2_pad1_even_incl",
        EVEN,
        {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 1},
        {"PAD": 1, "AVERAGE_POOL_2D": 1},
    ),
    (
        "k3_asym_excl",
        SHAPE,
        {"kernel_shape": [3, 2], "pads": [2, 0, 0, 1]},
        {"PAD": 1, "AVERAGE_POOL_2D": 1, "MUL": 1},
    ),
]


@pytest.mark.parametrize(
    ("case", "shape", "attrs", "ops"), AVG_CASES, ids=[c[0] for c in AVG_CASES]
)
def test_average_pool(case, shape, attrs, ops):
    model = make_model(
        [helper.make_node("AveragePool", ["x"], ["y"], **attrs)], {"x": shape}, ["y"]
    )
    check_parity(model, {"x": shape}, ops, BOTH)


@pytest.mark.parametrize(
    ("op", "tfl"), [("GlobalAveragePool", "MEAN"), ("GlobalMaxPool", "REDUCE_MAX")]
)
def test_global_pool(op, tfl):
    model = make_model([helper.make_node(op, ["x"], ["y"])], {"x": SHAPE}, ["y"])
    check_parity(model, {"x": SHAPE}, {tfl: 1}, BOTH)


def test_global_pool_flatten_gemm_has_no_transpose():
    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "w"], ["y"], transB=1),
    ]
    import numpy as np

    model = make_model(nodes, {"x": SHAPE}, ["y"], {"w": np.ones((4, 3), np.float32)})
    check_parity(model, {"x": SHAPE}, {"MEAN": 1, "RESHAPE": 1, "FULLY_CONNECTED": 1}, BOTH)
