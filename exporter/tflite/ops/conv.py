"""TFLite conv: ONNX Conv -> CONV_2D / DEPTHWISE_CONV_2D, ConvTranspose -> TRANSPOSE_CONV."""

from __future__ import annotations

import numpy as np
import onnx

from exporter.tflite import layout as L
from exporter.tflite.context import ConversionContext
from exporter.tflite.padding import choose_padding, emit_pad, onnx_pads
from exporter.tflite.registry import converter


def _geometry(
    node: onnx.NodeProto, ctx: ConversionContext
) -> tuple[list[int], list[int], list[int], list[int]]:
    a = ctx.attrs(node)
    w = ctx.const(node.input[1])
    kernel = list(a.get("kernel_shape", w.shape[2:] if w is not None else [1, 1]))
    strides = list(a.get("strides", [1, 1]))
    dilations = list(a.get("dilations", [1, 1]))
    pads = onnx_pads(a, ctx.shape(node.input[0])[2:], kernel, strides, dilations)
    return kernel, strides, dilations, pads


def _check_common(node: onnx.NodeProto, ctx: ConversionContext) -> str | None:
    if ctx.const(node.input[1]) is None:
        return "weights must be a constant initializer"
    if len(node.input) > 2 and node.input[2] and ctx.const(node.input[2]) is None:
        return "bias must be a constant initializer"
    if len(ctx.shape(node.input[0])) != 4:
        return "only 2-D convolution (rank-4 input) is supported"
    return None


def _bias(node: onnx.NodeProto, ctx: ConversionContext, channels: int) -> np.ndarray:
    # Always give the op a bias: later BatchNorm/Add folding then has somewhere to go.
    b = ctx.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    return np.zeros(channels, np.float32) if b is None else b.astype(np.float32)


@converter(
    "Conv",
    emits="CONV_2D (group 1, grouped); DEPTHWISE_CONV_2D (group == C_in); PAD first when pads are not TFLite SAME",
    check=_check_common,
)
def convert_conv(node: onnx.NodeProto, ctx: ConversionContext) -> None:
    a = ctx.attrs(node)
    w = ctx.const(node.input[1]).astype(np.float32)
    kernel, strides, dilations, pads = _geometry(node, ctx)
    in_c = ctx.shape(node.input[0])[1]
    out_c = w.shape[0]
    group = int(a.get("group", 1))
    x = ctx.tensor(node.input[0], L.NHWC)
    padding, explicit = choose_padding(
        ctx.shape(node.input[0])[2:], kernel, strides, dilations, pads
    )
    if explicit:
        x = emit_pad(ctx, x, explicit)
    geometry = dict(
        padding=padding,
        stride_h=strides[0],
        stride_w=strides[1],
        dilation_h_factor=dilations[0],
        dilation_w_factor=dilations[1],
        fused_activation_function="NONE",
    )
    bias = ctx.const_tensor(f"{node.output[0]}_bias", _bias(node, ctx, out_c))
    y = ctx.output(node.output[0], L.NHWC)
    if group > 1 and group == in_c and w.shape[1] == 1:
        weight = ctx.const_tensor(f"{node.output[0]}_filter", L.depthwise_weight_1hwo(w))
        ctx.emit(
            "DEPTHWISE_CONV_2D", [x, weight, bias], [y], depth_multiplier=out_c // in_c, **geometry
        )
        return
    # CONV_2D infers the group count from C_in / filter depth, so grouped conv needs no split.
    weight = ctx.const_tensor(f"{node.output[0]}_filter", L.conv_weight_ohwi(w))
    ctx.emit("CONV_2D", [x, weight, bias], [y], **geometry)


def _check_transpose_conv(node: onnx.NodeProto, ctx: ConversionContext) -> str | None:
    reason = _check_common(node, ctx)
    if reason:
        return reason
    a = ctx.attrs(node)
    if int(a.get("group", 1)) != 1:
        return "only group=1 is supported"
    if any(d != 1 for d in a.get("dilations", [1, 1])):
        return "dilations other than 1 are not supported"
    if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return f"auto_pad={a['auto_pad']} is not supported"
    pads = a.get("pads", [0, 0, 0, 0])
    if any(p > e for p, e in zip(a.get("output_padding", [0, 0]), pads[2:], strict=True)):
        return "output_padding larger than the end pads is not supported"
    return None


@converter(
    "ConvTranspose",
    emits="TRANSPOSE_CONV (VALID) + SLICE to crop ONNX pads; group 1, no dilation",
    check=_check_transpose_conv,
)
def convert_conv_transpose(node: onnx.NodeProto, ctx: ConversionContext) -> None:
    a = ctx.attrs(node)
    w = ctx.const(node.input[1]).astype(np.float32)
    strides = list(a.get("strides", [1, 1]))
    n, _, h, wd = ctx.shape(node.input[0])
    out_c = w.shape[1]
    kh, kw = w.shape[2:]
    full = (n, (h - 1) * strides[0] + kh, (wd - 1) * strides[1] + kw, out_c)
    pads = (
        list(a.get("pads", [0, 0, 0, 0]))
        if a.get("auto_pad", "NOTSET") == "NOTSET"
        else [0, 0, 0, 0]
    )
    x = ctx.tensor(node.input[0], L.NHWC)
    y = ctx.output(node.output[0], L.NHWC)
    target = ctx.graph.tensors[y].shape
    raw = y if full == target else ctx.temp(f"{y}_uncropped", full)
    ctx.emit(
        "TRANSPOSE_CONV",
        [
            ctx.const_tensor(f"{y}_output_shape", list(full), "int32"),
            ctx.const_tensor(f"{y}_filter", L.transpose_conv_weight(w)),
            x,
            ctx.const_tensor(f"{y}_bias", _bias(node, ctx, out_c)),
        ],
        [raw],
        padding="VALID",
        stride_h=strides[0],
        stride_w=strides[1],
        fused_activation_function="NONE",
    )
    if raw != y:
        begin = ctx.const_tensor(f"{y}_begin", [0, pads[0], pads[1], 0], "int32")
        size = ctx.const_tensor(f"{y}_size", list(target), "int32")
        ctx.emit("SLICE", [raw, begin, size], [y])
