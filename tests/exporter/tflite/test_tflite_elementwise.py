"""Parity of broadcasting arithmetic and activations (NHWC constants must be re-laid out)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from tflite_testutil import check_parity, make_model

RNG = np.random.default_rng(2)
X = (1, 3, 7, 5)
BOTH = ("xnnpack", "builtin")


def _const(*shape: int) -> np.ndarray:
    # Keep divisors away from 0 so Div parity is well conditioned.
    return (RNG.uniform(0.5, 2.0, shape) * RNG.choice([-1, 1], shape)).astype(np.float32)


def _conv_then(op_nodes: list, inits: dict, extra_inputs: dict | None = None) -> tuple:
    """A 1x1 conv first so the binary op sees a real NHWC activation."""
    conv = helper.make_node("Conv", ["x", "cw"], ["a"], kernel_shape=[1, 1])
    inits = {"cw": RNG.standard_normal((3, 3, 1, 1)).astype(np.float32), **inits}
    inputs = {"x": X, **(extra_inputs or {})}
    return make_model([conv, *op_nodes], inputs, ["y"], inits), inputs


# operand shape (constant) broadcast against [1, 3, 7, 5]
BROADCASTS = [
    (),
    (1,),
    (5,),
    (3, 1, 1),
    (1, 3, 1, 1),
    (7, 1),
    (7, 5),
    (1, 1, 7, 5),
    (3, 7, 5),
    (1, 3, 7, 5),
]


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Max", "Min"])
@pytest.mark.parametrize("shape", BROADCASTS, ids=lambda s: "x".join(map(str, s)) or "scalar")
def test_binary_with_constant(op, shape):
    model, inputs = _conv_then([helper.make_node(op, ["a", "c"], ["y"])], {"c": _const(*shape)})
    check_parity(model, inputs)


@pytest.mark.parametrize("op", ["Sub", "Div"])
def test_constant_on_the_left(op):
    model, inputs = _conv_then([helper.make_node(op, ["c", "a"], ["y"])], {"c": _const(3, 1, 1)})
    check_parity(model, inputs)


@pytest.mark.parametrize("other", [(1, 3, 1, 1), (1, 1, 7, 5), (5,), (7, 1), (1, 3, 7, 5)], ids=str)
def test_binary_two_activations(other):
    model, inputs = _conv_then([helper.make_node("Mul", ["a", "z"], ["y"])], {}, {"z": other})
    counts = check_parity(model, inputs, resolvers=BOTH)
    # Only a [7, 1] operand mixes into H without C being 1; everything else is a RESHAPE at most.
    assert counts.get("TRANSPOSE", 0) == 0


def test_add_constant_folds_into_conv_bias():
    model, inputs = _conv_then([helper.make_node("Add", ["a", "c"], ["y"])], {"c": _const(3, 1, 1)})
    check_parity(model, inputs, {"CONV_2D": 1})


def test_residual_add_relu_fuses():
    nodes = [helper.make_node("Add", ["a", "x"], ["s"]), helper.make_node("Relu", ["s"], ["y"])]
    model, inputs = _conv_then(nodes, {})
    check_parity(model, inputs, {"CONV_2D": 1, "ADD": 1})


UNARY = [
    ("Relu", {}, "RELU"),
    ("Sigmoid", {}, "LOGISTIC"),
    ("Tanh", {}, "TANH"),
    ("HardSwish", {}, "HARD_SWISH"),
    ("LeakyRelu", {"alpha": 0.2}, "LEAKY_RELU"),
    ("Abs", {}, "ABS"),
    ("Neg", {}, "NEG"),
    ("Exp", {}, "EXP"),
]


@pytest.mark.parametrize(("op", "attrs", "tfl"), UNARY, ids=[u[0] for u in UNARY])
def test_unary(op, attrs, tfl):
    model = make_model([helper.make_node(op, ["x"], ["y"], **attrs)], {"x": X}, ["y"])
    check_parity(model, {"x": X}, {tfl: 1}, BOTH)


def test_hard_sigmoid():
    node = helper.make_node("HardSigmoid", ["x"], ["y"], alpha=1 / 6, beta=0.5)
    model = make_model([node], {"x": X}, ["y"])
    check_parity(
        model,
        {"x": X},
        {"ADD": 1, "MUL": 1},  # relu6(x + 3) / 6: ADD with a fused RELU6, then MUL
        BOTH,
        feeds={"x": RNG.uniform(-5, 5, X).astype(np.float32)},
    )


CLIPS = [
    (0.0, 6.0, {"RELU6": 1}),
    (-1.0, 1.0, {"RELU_N1_TO_1": 1}),
    (0.0, 1.0, {"RELU_0_TO_1": 1}),
    (0.0, None, {"RELU": 1}),
    (-0.5, 0.7, {"MINIMUM": 1, "MAXIMUM": 1}),
    (None, 0.3, {"MINIMUM": 1}),
    (-0.2, None, {"MAXIMUM": 1}),
]


@pytest.mark.parametrize(("lo", "hi", "ops"), CLIPS, ids=[f"{c[0]}_{c[1]}" for c in CLIPS])
def test_clip(lo, hi, ops):
    inits, ins = {}, ["x", "", ""]
    if lo is not None:
        inits["lo"], ins[1] = np.float32(lo), "lo"
    if hi is not None:
        inits["hi"], ins[2] = np.float32(hi), "hi"
    while ins[-1] == "":
        ins.pop()
    model = make_model([helper.make_node("Clip", ins, ["y"])], {"x": X}, ["y"], inits)
    check_parity(model, {"x": X}, ops, BOTH, feeds={"x": RNG.uniform(-8, 8, X).astype(np.float32)})


def test_conv_relu6_fuses():
    nodes = [helper.make_node("Clip", ["a", "lo", "hi"], ["y"])]
    model, inputs = _conv_then(nodes, {"lo": np.float32(0), "hi": np.float32(6)})
    check_parity(model, inputs, {"CONV_2D": 1})


@pytest.mark.parametrize("slope_shape", [(3, 1, 1), (1,), ()], ids=str)
def test_prelu(slope_shape):
    slope = RNG.uniform(0.05, 0.5, slope_shape).astype(np.float32)
    model = make_model(
        [helper.make_node("PRelu", ["x", "s"], ["y"])], {"x": X}, ["y"], {"s": slope}
    )
    check_parity(model, {"x": X}, {"PRELU": 1}, BOTH)


@pytest.mark.parametrize(("op", "tfl"), [("Log", "LOG"), ("Sqrt", "SQRT"), ("Floor", "FLOOR")])
def test_unary_positive_domain(op, tfl):
    model = make_model([helper.make_node(op, ["x"], ["y"])], {"x": X}, ["y"])
    check_parity(
        model, {"x": X}, {tfl: 1}, feeds={"x": RNG.uniform(0.1, 4.0, X).astype(np.float32)}
    )


@pytest.mark.parametrize(
    ("exponent", "ops"),
    # XNNPACK has no POW: small integer and square-root exponents become the ops it runs.
    [(2.0, {"MUL": 1}), (3.0, {"MUL": 2}), (0.5, {"SQRT": 1}), (1.7, {"POW": 1})],
)
def test_pow_by_constant(exponent, ops):
    model = make_model(
        [helper.make_node("Pow", ["x", "e"], ["y"])], {"x": X}, ["y"], {"e": np.float32(exponent)}
    )
    check_parity(
        model, {"x": X}, ops, BOTH, feeds={"x": RNG.uniform(0.1, 2.0, X).astype(np.float32)}
    )
