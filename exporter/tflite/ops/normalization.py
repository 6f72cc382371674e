"""TFLite normalization: BatchNormalization -> per-channel MUL + ADD; LayerNormalization ->
MEAN, SUB, MUL, MEAN, ADD, RSQRT, MUL (+ MUL, ADD for scale and bias).

The fold_affine pass then merges a batch norm's MUL + ADD into a preceding CONV_2D /
DEPTHWISE_CONV_2D / FULLY_CONNECTED, so a Conv+BN pair ends up as one op. Every op of the
layer-norm sequence is one XNNPACK runs; the reductions use the normalized axes' positions in
the tensor's TFLite layout (a channel LayerNorm of an NHWC tensor reduces axis 3).
"""

from __future__ import annotations

import numpy as np
import onnx

from exporter.tflite import layout as L
from exporter.tflite.context import ConversionContext
from exporter.tflite.ops.elementwise import emit_binary
from exporter.tflite.registry import converter


def _check_bn(node: onnx.NodeProto, ctx: ConversionContext) -> str | None:
    if int(ctx.attrs(node).get("training_mode", 0)):
        return "training_mode=1 is not supported"
    if len([o for o in node.output if o]) > 1:
        return "running mean/var outputs are not supported"
    if any(ctx.const(i) is None for i in node.input[1:5]):
        return "scale, bias, mean and var must be constants"
    return None


@converter(
    "BatchNormalization",
    emits="MUL + ADD per channel (folded into a preceding conv/FC by a pass, else one 1x1 "
    "DEPTHWISE_CONV_2D)",
    check=_check_bn,
)
def convert_batch_norm(node: onnx.NodeProto, ctx: ConversionContext) -> None:
    scale, bias, mean, var = (ctx.const(i).astype(np.float64) for i in node.input[1:5])
    eps = float(ctx.attrs(node).get("epsilon", 1e-5))
    mult = scale / np.sqrt(var + eps)
    shift = bias - mean * mult
    rank = len(ctx.shape(node.input[0]))
    per_channel = (-1,) + (1,) * (rank - 2)  # ONNX channel axis is 1: broadcast as [C, 1, 1]
    y = node.output[0]
    scaled = ctx.declare(f"{y}__bn_scaled", ctx.shape(node.input[0]))
    emit_binary(ctx, "MUL", [node.input[0], mult.astype(np.float32).reshape(per_channel)], scaled)
    emit_binary(ctx, "ADD", [scaled, shift.astype(np.float32).reshape(per_channel)], y)


def _check_layer_norm(node: onnx.NodeProto, ctx: ConversionContext) -> str | None:
    if len([o for o in node.output if o]) > 1:
        return "the Mean / InvStdDev outputs are not supported"
    if any(i and ctx.const(i) is None for i in node.input[1:3]):
        return "scale and bias must be constants"
    return None


def _emit(ctx: ConversionContext, op: str, inputs: list[str], shape: tuple[int, ...]) -> str:
    out = ctx.temp(f"{inputs[0]}_{op.lower()}", shape)
    options = {"fused_activation_function": "NONE"} if op in ("ADD", "SUB", "MUL") else {}
    ctx.emit(op, inputs, [out], **options)
    return out


@converter(
    "LayerNormalization",
    emits="MEAN, SUB, MUL, MEAN, ADD eps, RSQRT, MUL, then MUL scale / ADD bias unless 1 / 0 "
    "(axes mapped to the NHWC positions)",
    check=_check_layer_norm,
)
def convert_layer_norm(node: onnx.NodeProto, ctx: ConversionContext) -> None:
    src, y = node.input[0], node.output[0]
    rank = len(ctx.shape(src))
    axis = L.normalize_axis(int(ctx.attrs(node).get("axis", -1)), rank)
    eps = float(ctx.attrs(node).get("epsilon", 1e-5))
    lay = ctx.layout(src)
    if lay.kind == "flat_hwc":
        lay = L.PLAIN  # the normalized columns must be contiguous, in ONNX order
    x = ctx.tensor(src, lay)
    onnx_axes = range(axis, rank)
    axes = sorted(L.nhwc_axis(a) for a in onnx_axes) if lay == L.NHWC else list(onnx_axes)
    shape = ctx.graph.tensors[x].shape
    reduced = tuple(1 if i in axes else d for i, d in enumerate(shape))

    def mean(t: str) -> str:
        out = ctx.temp(f"{t}_mean", reduced)
        ctx.emit("MEAN", [t, ctx.const_tensor(f"{out}_axes", axes, "int32")], [out], keep_dims=True)
        return out

    centered = _emit(ctx, "SUB", [x, mean(x)], shape)
    var = mean(_emit(ctx, "MUL", [centered, centered], shape))
    var_eps = _emit(ctx, "ADD", [var, ctx.const_tensor(f"{y}_eps", np.float32(eps))], reduced)
    inv_std = _emit(ctx, "RSQRT", [var_eps], reduced)
    scale = ctx.const(node.input[1]).astype(np.float32)
    bias = ctx.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    has_scale = not np.all(scale == 1.0)
    has_bias = bias is not None and bool(np.any(bias != 0.0))
    normed = f"{y}__normalized" if has_scale or has_bias else y
    if normed == y:
        ctx.emit("MUL", [centered, inv_std], [ctx.output(y, lay)], fused_activation_function="NONE")
        return
    ctx.declare(normed, ctx.shape(src))
    ctx.emit(
        "MUL", [centered, inv_std], [ctx.output(normed, lay)], fused_activation_function="NONE"
    )
    if has_scale:
        scaled = ctx.declare(f"{y}__scaled", ctx.shape(src)) if has_bias else y
        emit_binary(ctx, "MUL", [normed, scale], scaled)
        normed = scaled
    if has_bias:
        emit_binary(ctx, "ADD", [normed, bias.astype(np.float32)], y)  # type: ignore[union-attr]
