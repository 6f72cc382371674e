"""TFLite batch norm: inference BatchNormalization -> per-channel MUL + ADD.

The fold_affine pass then merges that MUL + ADD into a preceding CONV_2D /
DEPTHWISE_CONV_2D / FULLY_CONNECTED, so a Conv+BN pair ends up as one op.
"""

from __future__ import annotations

import numpy as np
import onnx

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
    emits="MUL + ADD per channel (folded into a preceding conv/FC by a pass)",
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
