"""TFLite activations: Relu, Clip, LeakyRelu, PRelu, Sigmoid, HardSigmoid, HardSwish, Tanh, Softmax.

Activations keep their input's layout; the fuse_activations pass later folds RELU / RELU6 /
RELU_N1_TO_1 into the producing conv, FC or arithmetic op.
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from exporter.tflite import layout as L
from exporter.tflite.context import ConversionContext
from exporter.tflite.ops.elementwise import emit_unary, register_unary
from exporter.tflite.registry import CheckFn, converter

for _onnx_op, _tfl_op in [
    ("Relu", "RELU"),
    ("Sigmoid", "LOGISTIC"),
    ("Tanh", "TANH"),
    ("HardSwish", "HARD_SWISH"),
]:
    register_unary(_onnx_op, _tfl_op)


@converter("LeakyRelu", emits="LEAKY_RELU")
def convert_leaky_relu(node: onnx.NodeProto, ctx: ConversionContext) -> None:
    alpha = float(ctx.attrs(node).get("alpha", 0.01))
    emit_unary(ctx, "LEAKY_RELU", node.input[0], node.output[0], alpha=alpha)


def _check_const_input(index: int, what: str) -> CheckFn:
    def check(node: onnx.NodeProto, ctx: ConversionContext) -> str | None:
        if len(node.input) > index and node.input[index] and ctx.const(node.input[index]) is None:
            return f"{what} must be a constant"
        return None

    return check


@converter(
    "PRelu", emits="PRELU (slope re-laid out for NHWC)", check=_check_const_input(1, "slope")
)
def convert_prelu(node: onnx.NodeProto, ctx: ConversionContext) -> None:
    lay = ctx.layout(node.input[0])
    rank = len(ctx.shape(node.input[0]))
    slope = L.broadcast_operand(ctx.const(node.input[1]).astype(np.float32), rank, lay)
    if slope is None:
        lay = L.PLAIN
        slope = L.broadcast_operand(ctx.const(node.input[1]).astype(np.float32), rank, lay)
    x = ctx.tensor(node.input[0], lay)
    alpha = ctx.const_tensor(f"{node.output[0]}_slope", slope)
    ctx.emit("PRELU", [x, alpha], [ctx.output(node.output[0], lay)])


def _clip_bounds(node: onnx.NodeProto, ctx: ConversionContext) -> tuple[float, float]:
    a = ctx.attrs(node)
    lo, hi = float(a.get("min", -math.inf)), float(a.get("max", math.inf))
    if len(node.input) > 1 and node.input[1]:
        lo = float(ctx.const(node.input[1]))
    if len(node.input) > 2 and node.input[2]:
        hi = float(ctx.const(node.input[2]))
    return lo, hi


def _check_clip(node: onnx.NodeProto, ctx: ConversionContext) -> str | None:
    return _check_const_input(1, "min")(node, ctx) or _check_const_input(2, "max")(node, ctx)


_CLIP_OPS = {
    (0.0, 6.0): "RELU6",
    (-1.0, 1.0): "RELU_N1_TO_1",
    (0.0, 1.0): "RELU_0_TO_1",
    (0.0, math.inf): "RELU",
}


def emit_clip(ctx: ConversionContext, src: str, dst: str, lo: float, hi: float) -> None:
    op = _CLIP_OPS.get((lo, hi))
    if op:
        emit_unary(ctx, op, src, dst)
        return
    lay = ctx.layout(src)
    x = ctx.tensor(src, lay)
    shape = ctx.graph.tensors[x].shape
    if hi < math.inf:
        clipped = ctx.temp(f"{dst}_min", shape) if lo > -math.inf else ctx.output(dst, lay)
        ctx.emit("MINIMUM", [x, ctx.const_tensor(f"{dst}_hi", np.float32(hi))], [clipped])
        x = clipped
    if lo > -math.inf:
        ctx.emit(
            "MAXIMUM", [x, ctx.const_tensor(f"{dst}_lo", np.float32(lo))], [ctx.output(dst, lay)]
        )
    if lo == -math.inf and hi == math.inf:
        emit_unary(ctx, "IDENTITY", src, dst)  # unbounded clip; the remove_identity pass drops it


@converter(
    "Clip",
    emits="RELU / RELU6 / RELU_N1_TO_1 / RELU_0_TO_1 for those ranges, else MINIMUM + MAXIMUM",
    check=_check_clip,
)
def convert_clip(node: onnx.NodeProto, ctx: ConversionContext) -> None:
    lo, hi = _clip_bounds(node, ctx)
    emit_clip(ctx, node.input[0], node.output[0], lo, hi)


@converter("HardSigmoid", emits="MUL + ADD + RELU_0_TO_1")
def convert_hard_sigmoid(node: onnx.NodeProto, ctx: ConversionContext) -> None:
    a = ctx.attrs(node)
    alpha, beta = float(a.get("alpha", 0.2)), float(a.get("beta", 0.5))
    lay = ctx.layout(node.input[0])
    x = ctx.tensor(node.input[0], lay)
    shape = ctx.graph.tensors[x].shape
    scaled = ctx.temp(f"{node.output[0]}_scaled", shape)
    shifted = ctx.temp(f"{node.output[0]}_shifted", shape)
    ctx.emit(
        "MUL",
        [x, ctx.const_tensor(f"{scaled}_alpha", np.float32(alpha))],
        [scaled],
        fused_activation_function="NONE",
    )
    ctx.emit(
        "ADD",
        [scaled, ctx.const_tensor(f"{shifted}_beta", np.float32(beta))],
        [shifted],
        fused_activation_function="NONE",
    )
    ctx.emit("RELU_0_TO_1", [shifted], [ctx.output(node.output[0], lay)])


def _softmax_axis(node: onnx.NodeProto, ctx: ConversionContext) -> int:
    rank = len(ctx.shape(node.input[0]))
    return L.normalize_axis(int(ctx.attrs(node).get("axis", -1)), rank)


def _check_softmax(node: onnx.NodeProto, ctx: ConversionContext) -> str | None:
    rank = len(ctx.shape(node.input[0]))
    axis = _softmax_axis(node, ctx)
    # TFLite SOFTMAX reduces the innermost dim: the ONNX axis must be last in plain or NHWC form.
    if axis == rank - 1 or (rank == 4 and axis == 1):
        return None
    return f"axis={axis} is not the last axis (TFLite SOFTMAX only reduces the innermost dim)"


@converter(
    "Softmax", emits="SOFTMAX (axis last, or channel axis of an NHWC tensor)", check=_check_softmax
)
def convert_softmax(node: onnx.NodeProto, ctx: ConversionContext) -> None:
    rank = len(ctx.shape(node.input[0]))
    axis = _softmax_axis(node, ctx)
    lay = ctx.layout(node.input[0])
    if rank == 4 and axis == 1:
        lay = L.NHWC
    elif lay == L.NHWC:
        lay = L.PLAIN
    # flat_hwc is fine for a last-axis softmax: it is invariant to the column order.
    x = ctx.tensor(node.input[0], lay)
    ctx.emit("SOFTMAX", [x], [ctx.output(node.output[0], lay)], beta=1.0)
