"""TFLite pooling: MaxPool / AveragePool -> MAX_POOL_2D / AVERAGE_POOL_2D, global pools -> MEAN / REDUCE_MAX.

TFLite's SAME padding leaves padded cells out of both max and average, which is ONNX's
count_include_pad=0. Every other combination is rewritten to a PAD + VALID pool so the
numbers match exactly.

XNNPACK takes PAD (zero fill) but not PADV2, so a max pool's explicit padding is written as a
zero PAD when the input cannot be negative (a ReLU in front, as in every ResNet stem), and
otherwise by repeating the edge rows/columns (SLICE + CONCATENATION): a window that reaches
into the padding also covers the edge it repeats, because ONNX pads are smaller than the
kernel, so the copies never change a maximum. A 1x1, stride-1 pool without pads is dropped.
"""

from __future__ import annotations

import numpy as np
import onnx

from exporter.tflite import layout as L
from exporter.tflite import quant
from exporter.tflite.context import ConversionContext
from exporter.tflite.ops.elementwise import emit_unary
from exporter.tflite.padding import choose_padding, emit_pad, onnx_pads
from exporter.tflite.registry import converter

# Ops whose output is never negative: zero is as good as -inf as max-pool padding after them.
_NON_NEGATIVE_OPS = {"RELU", "RELU6", "RELU_0_TO_1", "LOGISTIC", "SOFTMAX", "ABS", "EXP", "SQRT"}
_NON_NEGATIVE_FUSED = {"RELU", "RELU6"}


def _window(node: onnx.NodeProto, ctx: ConversionContext) -> tuple[list[int], list[int], list[int]]:
    a = ctx.attrs(node)
    kernel = list(a["kernel_shape"])
    strides = list(a.get("strides", [1, 1]))
    pads = onnx_pads(a, ctx.shape(node.input[0])[2:], kernel, strides, [1, 1])
    if int(a.get("ceil_mode", 0)):
        # Grow the end pads until a VALID window walk gives the ceil-mode output size.
        out_hw = ctx.shape(node.output[0])[2:]
        for i, (size, k, s, o) in enumerate(
            zip(ctx.shape(node.input[0])[2:], kernel, strides, out_hw, strict=True)
        ):
            pads[i + 2] = max(pads[i + 2], (o - 1) * s + k - size - pads[i])
    return kernel, strides, pads


def _check_pool(node: onnx.NodeProto, ctx: ConversionContext) -> str | None:
    a = ctx.attrs(node)
    if len(ctx.shape(node.input[0])) != 4:
        return "only 2-D pooling (rank-4 input) is supported"
    if any(d != 1 for d in a.get("dilations", [1, 1])):
        return "dilations other than 1 are not supported"
    if len([o for o in node.output if o]) > 1:
        return "the Indices output is not supported"
    if int(a.get("storage_order", 0)):
        return "storage_order=1 is not supported"
    return None


def _pool_options(kernel: list[int], strides: list[int], padding: str) -> dict[str, object]:
    return dict(
        padding=padding,
        stride_h=strides[0],
        stride_w=strides[1],
        filter_height=kernel[0],
        filter_width=kernel[1],
        fused_activation_function="NONE",
    )


def _is_identity(node: onnx.NodeProto, ctx: ConversionContext) -> bool:
    """A 1x1 window at stride 1 without padding copies its input (e.g. an adaptive pool whose
    output size equals its input size)."""
    kernel, strides, pads = _window(node, ctx)
    return kernel == [1, 1] and strides == [1, 1] and not any(pads)


def _non_negative(ctx: ConversionContext, x: str, onnx_name: str) -> bool:
    """True when ``x`` cannot hold a negative value, so zero padding never wins a maximum."""
    params = ctx.qparams.get(onnx_name)
    if params is not None and len(params.scales) == 1 and params.zero_point == quant.INT8_MIN:
        return True  # int8 with zero at the bottom of the range: nothing below 0 is representable
    producer = ctx.graph.producer(x)
    if producer is None:
        return False
    if producer.op in _NON_NEGATIVE_OPS:
        return True
    return producer.options.get("fused_activation_function") in _NON_NEGATIVE_FUSED


def _inherit_params(ctx: ConversionContext, src: str, dst: str) -> str:
    params = quant.params_of(ctx.graph.tensors[src])
    if params is not None:
        quant.set_params(ctx.graph.tensors[dst], params)
    return dst


def _edge_pad(ctx: ConversionContext, x: str, pads: list[int]) -> str:
    """Pad NHWC ``x`` by ONNX-order pads [t, l, b, r], repeating the edge row / column."""
    for axis, (before, after) in ((1, (pads[0], pads[2])), (2, (pads[1], pads[3]))):
        if not before and not after:
            continue
        shape = ctx.graph.tensors[x].shape
        edge_shape = tuple(1 if i == axis else d for i, d in enumerate(shape))
        pieces = []
        for index, count in ((0, before), (shape[axis] - 1, after)):
            if not count:
                pieces.append(None)
                continue
            begin = [index if i == axis else 0 for i in range(4)]
            edge = _inherit_params(ctx, x, ctx.temp(f"{x}_edge", edge_shape))
            ctx.emit(
                "SLICE",
                [
                    x,
                    ctx.const_tensor(f"{edge}_begin", begin, "int32"),
                    ctx.const_tensor(f"{edge}_size", list(edge_shape), "int32"),
                ],
                [edge],
            )
            pieces.append([edge] * count)
        inputs = (pieces[0] or []) + [x] + (pieces[1] or [])
        out_shape = tuple(d + before + after if i == axis else d for i, d in enumerate(shape))
        out = _inherit_params(ctx, x, ctx.temp(f"{x}_edge_padded", out_shape))
        ctx.emit("CONCATENATION", inputs, [out], axis=axis, fused_activation_function="NONE")
        x = out
    return x


@converter(
    "MaxPool",
    emits="MAX_POOL_2D (SAME when pads match; else VALID after a zero PAD when the input is "
    "non-negative, or after repeating the edges with SLICE + CONCATENATION; ceil_mode via end "
    "pads; a 1x1 stride-1 pool is dropped)",
    check=_check_pool,
)
def convert_max_pool(node: onnx.NodeProto, ctx: ConversionContext) -> None:
    if _is_identity(node, ctx):
        emit_unary(ctx, "IDENTITY", node.input[0], node.output[0])
        return
    kernel, strides, pads = _window(node, ctx)
    x = ctx.tensor(node.input[0], L.NHWC)
    padding, explicit = choose_padding(ctx.shape(node.input[0])[2:], kernel, strides, [1, 1], pads)
    if explicit and _non_negative(ctx, x, node.input[0]):
        x = emit_pad(ctx, x, explicit)
    elif explicit:
        x = _edge_pad(ctx, x, explicit)
    ctx.emit(
        "MAX_POOL_2D",
        [x],
        [ctx.output(node.output[0], L.NHWC)],
        **_pool_options(kernel, strides, padding),
    )


def _valid_counts(
    out_hw: tuple[int, ...],
    kernel: list[int],
    strides: list[int],
    pads: list[int],
    region: list[tuple[int, int]],
) -> np.ndarray:
    """Per output cell, how many window cells fall inside ``region`` (per dim [lo, hi) in
    input coordinates): the cells ONNX divides by."""
    per_dim = []
    for i in range(2):
        starts = np.arange(out_hw[i]) * strides[i] - pads[i]
        lo = np.clip(starts, *region[i])
        hi = np.clip(starts + kernel[i], *region[i])
        per_dim.append(hi - lo)
    return np.outer(per_dim[0], per_dim[1]).astype(np.float32)


@converter(
    "AveragePool",
    emits="AVERAGE_POOL_2D (SAME when it matches count_include_pad=0; else PAD + VALID, with a "
    "MUL rescale where ONNX divides by fewer cells: count_include_pad=0, ceil_mode=1; a 1x1 "
    "stride-1 pool is dropped)",
    check=_check_pool,
)
def convert_average_pool(node: onnx.NodeProto, ctx: ConversionContext) -> None:
    if _is_identity(node, ctx):
        emit_unary(ctx, "IDENTITY", node.input[0], node.output[0])
        return
    a = ctx.attrs(node)
    kernel, strides, pads = _window(node, ctx)
    in_hw = ctx.shape(node.input[0])[2:]
    declared = onnx_pads(a, in_hw, kernel, strides, [1, 1])
    # ONNX counts declared padding (count_include_pad=1) but never the cells ceil_mode adds.
    include_pad = bool(int(a.get("count_include_pad", 0))) and any(declared)
    x = ctx.tensor(node.input[0], L.NHWC)
    padding, explicit = choose_padding(in_hw, kernel, strides, [1, 1], pads)
    if padding == "SAME" and include_pad:
        padding, explicit = "VALID", pads  # TFLite SAME never counts the padded cells
    y = ctx.output(node.output[0], L.NHWC)
    if not explicit:
        ctx.emit("AVERAGE_POOL_2D", [x], [y], **_pool_options(kernel, strides, padding))
        return
    x = emit_pad(ctx, x, explicit)
    region = [
        (-declared[i], in_hw[i] + declared[i + 2]) if include_pad else (0, in_hw[i])
        for i in range(2)
    ]
    counts = _valid_counts(ctx.shape(node.output[0])[2:], kernel, strides, explicit, region)
    window = kernel[0] * kernel[1]
    if np.all(counts == window):
        ctx.emit("AVERAGE_POOL_2D", [x], [y], **_pool_options(kernel, strides, "VALID"))
        return
    # Zero padding was averaged in; rescale each cell by window size / cells ONNX counts.
    pooled = ctx.temp(f"{y}_with_pad", ctx.graph.tensors[y].shape)
    ctx.emit("AVERAGE_POOL_2D", [x], [pooled], **_pool_options(kernel, strides, "VALID"))
    scale = (window / counts)[None, :, :, None]
    ctx.emit(
        "MUL",
        [pooled, ctx.const_tensor(f"{y}_rescale", scale)],
        [y],
        fused_activation_function="NONE",
    )


def _check_global(node: onnx.NodeProto, ctx: ConversionContext) -> str | None:
    return None if len(ctx.shape(node.input[0])) == 4 else "only rank-4 input is supported"


def _global(onnx_op: str, tfl_op: str) -> None:
    def convert(node: onnx.NodeProto, ctx: ConversionContext) -> None:
        x = ctx.tensor(node.input[0], L.NHWC)
        axes = ctx.const_tensor(f"{node.output[0]}_axes", [1, 2], "int32")
        ctx.emit(tfl_op, [x, axes], [ctx.output(node.output[0], L.NHWC)], keep_dims=True)

    converter(onnx_op, emits=f"{tfl_op} over H, W (keep_dims)", check=_check_global)(convert)


_global("GlobalAveragePool", "MEAN")
_global("GlobalMaxPool", "REDUCE_MAX")
