"""TFLite shape ops: Reshape / Flatten / Squeeze / Unsqueeze, Transpose, Concat, Pad, Identity / Dropout.

A reshape is free (one RESHAPE) when the NHWC bytes already sit in the order the target
needs; the flatten of an NHWC activation yields a flat_hwc value that a following
FULLY_CONNECTED absorbs. Only a reshape that truly mixes channels with space costs a TRANSPOSE.
"""

from __future__ import annotations

import numpy as np
import onnx

from exporter.tflite import layout as L
from exporter.tflite.context import ConversionContext
from exporter.tflite.registry import converter


def _from_plain_memory(ctx: ConversionContext, x: str, dst: str) -> None:
    """``x`` holds ``dst``'s elements in ONNX order; give it ``dst``'s shape."""
    out_shape = ctx.shape(dst)
    if len(out_shape) == 4 and L.is_pure_reshape(out_shape, L.NCHW_TO_NHWC):
        ctx.bind(dst, ctx.reshape(x, L.to_nhwc_shape(out_shape)), L.NHWC)
    else:
        # A rank-4 result that is not pure stays PLAIN; NHWC consumers transpose on demand.
        ctx.bind(dst, ctx.reshape(x, out_shape), L.PLAIN)


def emit_reshape(ctx: ConversionContext, src: str, dst: str) -> None:
    in_shape, out_shape = ctx.shape(src), ctx.shape(dst)
    lay = ctx.layout(src)
    if in_shape == out_shape:
        ctx.emit("IDENTITY", [ctx.tensor(src, lay)], [ctx.output(dst, lay)])
        return
    if lay == L.NHWC:
        n, c, h, w = in_shape
        if L.is_pure_reshape(in_shape, L.NCHW_TO_NHWC):
            _from_plain_memory(ctx, ctx.tensor(src, L.NHWC), dst)
            return
        if out_shape == (n, c * h * w):
            flat = L.flat_hwc(c, h, w)
            ctx.bind(dst, ctx.reshape(ctx.tensor(src, L.NHWC), out_shape), flat)
            return
    elif lay.kind == "flat_hwc":
        c, h, w = lay.chw  # type: ignore[misc]
        if out_shape == (in_shape[0], c, h, w):
            ctx.bind(dst, ctx.reshape(ctx.tensor(src, lay), (in_shape[0], h, w, c)), L.NHWC)
            return
    _from_plain_memory(ctx, ctx.tensor(src, L.PLAIN), dst)


def _convert_reshape(node: onnx.NodeProto, ctx: ConversionContext) -> None:
    # The target shape comes from shape inference, so all four ops are the same lowering.
    emit_reshape(ctx, node.input[0], node.output[0])


for _op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
    converter(
        _op,
        emits="RESHAPE (flatten of NHWC feeds FULLY_CONNECTED with permuted weights; TRANSPOSE only if channels mix)",
    )(_convert_reshape)


@converter(
    "Transpose",
    emits="TRANSPOSE with the perm composed with the NHWC layout (RESHAPE or nothing when possible)",
)
def convert_transpose(node: onnx.NodeProto, ctx: ConversionContext) -> None:
    src, dst = node.input[0], node.output[0]
    rank = len(ctx.shape(src))
    perm = list(ctx.attrs(node).get("perm", list(reversed(range(rank)))))
    lay = ctx.layout(src)
    if lay == L.NHWC:
        x, perm = ctx.tensor(src, L.NHWC), L.compose(L.NHWC_TO_NCHW, perm)
    else:
        x = ctx.tensor(src, L.PLAIN)
    out_lay = L.NHWC if rank == 4 else L.PLAIN
    if out_lay == L.NHWC:
        perm = L.compose(perm, L.NCHW_TO_NHWC)
    if L.is_identity(perm):
        ctx.emit("IDENTITY", [x], [ctx.output(dst, out_lay)])
        return
    ctx.bind(dst, ctx.permute(x, ctx.graph.tensors[x].shape, perm), out_lay)


@converter("Concat", emits="CONCATENATION (axis mapped to NHWC)")
def convert_concat(node: onnx.NodeProto, ctx: ConversionContext) -> None:
    names = [n for n in node.input if n]
    rank = len(ctx.shape(node.output[0]))
    axis = L.normalize_axis(int(ctx.attrs(node)["axis"]), rank)
    live = [ctx.layout(n) for n in names if ctx.const(n) is None]
    lay = L.NHWC if rank == 4 and L.NHWC in live else L.PLAIN
    inputs = [ctx.tensor(n, lay) for n in names]
    tfl_axis = L.nhwc_axis(axis) if lay == L.NHWC else axis
    ctx.emit(
        "CONCATENATION",
        inputs,
        [ctx.output(node.output[0], lay)],
        axis=tfl_axis,
        fused_activation_function="NONE",
    )


def _pad_amounts(node: onnx.NodeProto, ctx: ConversionContext) -> np.ndarray:
    """[rank, 2] (begin, end) per ONNX axis, honouring the opset-18 ``axes`` input."""
    rank = len(ctx.shape(node.input[0]))
    pads = ctx.const(node.input[1]).astype(np.int64).reshape(-1)
    axes = list(range(rank))
    if len(node.input) > 3 and node.input[3]:
        axes = [L.normalize_axis(int(a), rank) for a in ctx.const(node.input[3]).reshape(-1)]
    full = np.zeros((rank, 2), np.int64)
    half = len(pads) // 2
    for i, ax in enumerate(axes):
        full[ax] = (pads[i], pads[half + i])
    return full


def _check_pad(node: onnx.NodeProto, ctx: ConversionContext) -> str | None:
    mode = ctx.attrs(node).get("mode", "constant")
    if mode != "constant":
        return f"mode={mode} is not supported (only constant)"
    if any(i and ctx.const(i) is None for i in node.input[1:]):
        return "pads, constant_value and axes must be constants"
    if (_pad_amounts(node, ctx) < 0).any():
        return "negative pads (cropping) are not supported"
    return None


@converter(
    "Pad", emits="PAD (zero) / PADV2 (other constant), pads mapped to NHWC", check=_check_pad
)
def convert_pad(node: onnx.NodeProto, ctx: ConversionContext) -> None:
    amounts = _pad_amounts(node, ctx)
    lay = ctx.layout(node.input[0])
    if lay.kind == "flat_hwc":
        lay = L.PLAIN
    if lay == L.NHWC:
        amounts = amounts[list(L.NCHW_TO_NHWC)]
    value = 0.0
    if len(node.input) > 2 and node.input[2]:
        value = float(ctx.const(node.input[2]).reshape(-1)[0])
    x = ctx.tensor(node.input[0], lay)
    y = ctx.output(node.output[0], lay)
    paddings = ctx.const_tensor(f"{y}_paddings", amounts, "int32")
    if value == 0.0:
        ctx.emit("PAD", [x, paddings], [y])
    else:
        ctx.emit("PADV2", [x, paddings, ctx.const_tensor(f"{y}_value", [value], "float32")], [y])


def _check_dropout(node: onnx.NodeProto, ctx: ConversionContext) -> str | None:
    return "the mask output is not supported" if len([o for o in node.output if o]) > 1 else None


def _passthrough(node: onnx.NodeProto, ctx: ConversionContext) -> None:
    lay = ctx.layout(node.input[0])
    ctx.emit("IDENTITY", [ctx.tensor(node.input[0], lay)], [ctx.output(node.output[0], lay)])


converter("Identity", emits="nothing (removed by the remove_identity pass)")(_passthrough)
converter(
    "Dropout",
    emits="nothing (inference: removed by the remove_identity pass)",
    check=_check_dropout,
)(_passthrough)
