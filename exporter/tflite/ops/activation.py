"""TFLite activations: Relu, Clip, LeakyRelu, PRelu, Sigmoid, HardSigmoid, HardSwish, Gelu, Tanh, Softmax.

Activations keep their input's layout; the fuse_activations pass later folds RELU / RELU6 /
RELU_N1_TO_1 into the producing conv, FC or arithmetic op.
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from exporter.tflite import layout as L
from exporter.tflite import quant
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


def _scaled_params(ctx: ConversionContext, onnx_name: str, factor: float) -> quant.QParams | None:
    """int8 parameters of ``factor`` times ONNX value ``onnx_name`` (same integers)."""
    params = ctx.qparams.get(onnx_name)
    if params is None or factor <= 0 or len(params.scales) != 1:
        return None
    return quant.QParams.per_tensor(params.scale * factor, params.zero_point)


def _step(
    ctx: ConversionContext,
    op: str,
    inputs: list[str],
    hint: str,
    params: quant.QParams | None,
    **options: object,
) -> str:
    shape = ctx.graph.tensors[inputs[0]].shape
    out = ctx.temp(hint, shape)
    if params is not None:
        quant.set_params(ctx.graph.tensors[out], params)
    ctx.emit(op, inputs, [out], **options)
    return out


@converter(
    "HardSigmoid",
    emits="[MUL 6*alpha] + ADD 6*beta + RELU6 + MUL 1/6 (a conv in front absorbs the MUL and "
    "ADD; XNNPACK has no RELU_0_TO_1)",
)
def convert_hard_sigmoid(node: onnx.NodeProto, ctx: ConversionContext) -> None:
    # clip(a*x + b, 0, 1) == relu6(6a*x + 6b) / 6. For torch's a = 1/6, b = 1/2 that is
    # relu6(x + 3) / 6: the ADD folds into a preceding conv's bias and the RELU6 into its
    # activation, leaving one MUL. In int8 the value before the final MUL holds the output's
    # integers at six times its scale, so that MUL only relabels them.
    a = ctx.attrs(node)
    alpha, beta = float(a.get("alpha", 0.2)), float(a.get("beta", 0.5))
    src, dst = node.input[0], node.output[0]
    lay = ctx.layout(src)
    x = ctx.tensor(src, lay)
    six_out = _scaled_params(ctx, dst, 6.0)
    none = {"fused_activation_function": "NONE"}
    if not math.isclose(6.0 * alpha, 1.0, rel_tol=1e-6):
        gain = ctx.const_tensor(f"{dst}_gain", np.float32(6.0 * alpha))
        x = _step(
            ctx, "MUL", [x, gain], f"{dst}_scaled", _scaled_params(ctx, src, 6.0 * alpha), **none
        )
    shift = ctx.const_tensor(f"{dst}_shift", np.float32(6.0 * beta))
    shifted = _step(ctx, "ADD", [x, shift], f"{dst}_shifted", six_out, **none)
    clipped = _step(ctx, "RELU6", [shifted], f"{dst}_relu6", six_out)
    sixth = ctx.const_tensor(f"{dst}_sixth", np.float32(1.0 / 6.0))
    ctx.emit("MUL", [clipped, sixth], [ctx.output(dst, lay)], **none)


def _gelu_approximate(node: onnx.NodeProto, ctx: ConversionContext) -> str:
    return str(ctx.attrs(node).get("approximate", "none"))


def _check_gelu(node: onnx.NodeProto, ctx: ConversionContext) -> str | None:
    approximate = _gelu_approximate(node, ctx)
    if approximate not in ("none", "tanh"):
        return f"approximate='{approximate}' is not 'none' or 'tanh'"
    return None


@converter(
    "Gelu",
    emits="GELU (approximate for 'tanh'); torch's Erf and tanh GELU sub-graphs are fused into it",
    check=_check_gelu,
)
def convert_gelu(node: onnx.NodeProto, ctx: ConversionContext) -> None:
    approximate = _gelu_approximate(node, ctx) == "tanh"
    emit_unary(ctx, "GELU", node.input[0], node.output[0], approximate=approximate)


def _check_erf(node: onnx.NodeProto, ctx: ConversionContext) -> str | None:
    return (
        "TFLite has no ERF; Erf converts only inside the exact GELU pattern "
        "x * 0.5 * (1 + Erf(x / sqrt(2))) (nn.GELU())"
    )


@converter("Erf", emits="only inside the exact GELU pattern (fused into GELU)", check=_check_erf)
def convert_erf(node: onnx.NodeProto, ctx: ConversionContext) -> None:
    raise ctx.error(_check_erf(node, ctx) or "")


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
