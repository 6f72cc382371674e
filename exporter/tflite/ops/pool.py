"""TFLite pooling: MaxPool / AveragePool -> MAX_POOL_2D / AVERAGE_POOL_2D, global pools -> MEAN / REDUCE_MAX.

TFLite's SAME padding leaves padded cells out of both max and average, which is ONNX's
count_include_pad=0. Every other combination is rewritten to a PAD + VALID pool so the
numbers match exactly.
"""

from __future__ import annotations

import numpy as np
import onnx

from exporter.tflite import layout as L
from exporter.tflite.context import ConversionContext
from exporter.tflite.padding import choose_padding, emit_pad, onnx_pads
from exporter.tflite.registry import converter

_LOWEST = float(np.finfo(np.float32).min)  # max-pool padding that can never win


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
    if node.op_type == "AveragePool" and int(a.get("ceil_mode", 0)):
        return "ceil_mode=1 is not supported for AveragePool"
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


@converter(
    "MaxPool",
    emits="MAX_POOL_2D (SAME when pads match, else PADV2(lowest) + VALID; ceil_mode via end pads)",
    check=_check_pool,
)
def convert_max_pool(node: onnx.NodeProto, ctx: ConversionContext) -> None:
    kernel, strides, pads = _window(node, ctx)
    x = ctx.tensor(node.input[0], L.NHWC)
    padding, explicit = choose_padding(ctx.shape(node.input[0])[2:], kernel, strides, [1, 1], pads)
    if explicit:
        x = emit_pad(ctx, x, explicit, _LOWEST)
    ctx.emit(
        "MAX_POOL_2D",
        [x],
        [ctx.output(node.output[0], L.NHWC)],
        **_pool_options(kernel, strides, padding),
    )


def _valid_counts(
    in_hw: tuple[int, ...],
    out_hw: tuple[int, ...],
    kernel: list[int],
    strides: list[int],
    pads: list[int],
) -> np.ndarray:
    """Per output cell, how many window cells fall inside the unpadded input."""
    per_dim = []
    for i in range(2):
        starts = np.arange(out_hw[i]) * strides[i] - pads[i]
        lo = np.clip(starts, 0, in_hw[i])
        hi = np.clip(starts + kernel[i], 0, in_hw[i])
        per_dim.append(hi - lo)
    return np.outer(per_dim[0], per_dim[1]).astype(np.float32)


@converter(
    "AveragePool",
    emits="AVERAGE_POOL_2D (SAME when it matches count_include_pad=0; else PAD + VALID, with a MUL rescale for count_include_pad=0)",
    check=_check_pool,
)
def convert_average_pool(node: onnx.NodeProto, ctx: ConversionContext) -> None:
    kernel, strides, pads = _window(node, ctx)
    include_pad = bool(int(ctx.attrs(node).get("count_include_pad", 0)))
    in_hw = ctx.shape(node.input[0])[2:]
    x = ctx.tensor(node.input[0], L.NHWC)
    padding, explicit = choose_padding(in_hw, kernel, strides, [1, 1], pads)
    if padding == "SAME" and include_pad:
        padding, explicit = "VALID", pads  # TFLite SAME never counts the padded cells
    y = ctx.output(node.output[0], L.NHWC)
    if not explicit:
        ctx.emit("AVERAGE_POOL_2D", [x], [y], **_pool_options(kernel, strides, padding))
        return
    x = emit_pad(ctx, x, explicit)
    if include_pad:
        ctx.emit("AVERAGE_POOL_2D", [x], [y], **_pool_options(kernel, strides, "VALID"))
        return
    # Zero padding was averaged in; rescale each cell by window size / cells actually inside.
    pooled = ctx.temp(f"{y}_with_pad", ctx.graph.tensors[y].shape)
    ctx.emit("AVERAGE_POOL_2D", [x], [pooled], **_pool_options(kernel, strides, "VALID"))
    counts = _valid_counts(in_hw, ctx.shape(node.output[0])[2:], kernel, strides, explicit)
    scale = (kernel[0] * kernel[1] / counts)[None, :, :, None]
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
