"""TFLite fully connected: ONNX Gemm / MatMul -> FULLY_CONNECTED (BATCH_MATMUL for two activations).

An input that is a flatten of an NHWC activation (layout flat_hwc) is absorbed by permuting
the weight columns to (h, w, c) order, which is what keeps CNN heads free of TRANSPOSE ops.
"""

from __future__ import annotations

import numpy as np
import onnx

from exporter.tflite import layout as L
from exporter.tflite.context import ConversionContext
from exporter.tflite.registry import converter


def _check_gemm(node: onnx.NodeProto, ctx: ConversionContext) -> str | None:
    a = ctx.attrs(node)
    if int(a.get("transA", 0)) != 0:
        return "transA=1 is not supported"
    if ctx.const(node.input[1]) is None:
        return "B must be a constant initializer"
    return None


def _fc_input(ctx: ConversionContext, name: str) -> tuple[str, L.Layout]:
    lay = ctx.layout(name)
    if lay.kind == "flat_hwc":
        return ctx.tensor(name, lay), lay
    return ctx.tensor(name, L.PLAIN), L.PLAIN


@converter(
    "Gemm",
    emits="FULLY_CONNECTED (transA=0, transB 0/1, alpha/beta folded; non-row bias -> ADD)",
    check=_check_gemm,
)
def convert_gemm(node: onnx.NodeProto, ctx: ConversionContext) -> None:
    a = ctx.attrs(node)
    b = ctx.const(node.input[1]).astype(np.float32)
    weight = (b if int(a.get("transB", 0)) else b.T) * np.float32(a.get("alpha", 1.0))
    n_out = weight.shape[0]
    x, lay = _fc_input(ctx, node.input[0])
    weight_t = ctx.const_tensor(f"{node.output[0]}_weights", L.fc_weight_for_input(weight, lay))
    beta = np.float32(a.get("beta", 1.0))
    c_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
    c = ctx.const(c_name) if c_name else None
    bias = None
    if c is not None and (c.ndim <= 1 or c.shape[0] == 1):
        bias = ctx.const_tensor(
            f"{node.output[0]}_bias", np.broadcast_to(c.reshape(-1) * beta, (n_out,))
        )
    if c_name is None or bias is not None:
        y = ctx.output(node.output[0], L.PLAIN)
        ctx.emit("FULLY_CONNECTED", [x, weight_t, bias], [y], fused_activation_function="NONE")
        return
    # A per-row (M, N) C cannot be a FULLY_CONNECTED bias: add it afterwards.
    m = ctx.shape(node.output[0])[0]
    fc = ctx.temp(f"{node.output[0]}_fc", (m, n_out))
    ctx.emit("FULLY_CONNECTED", [x, weight_t, None], [fc], fused_activation_function="NONE")
    addend = (
        ctx.const_tensor(f"{node.output[0]}_c", c * beta)
        if c is not None
        else ctx.tensor(c_name, L.PLAIN)
    )
    if c is None and beta != 1.0:
        scaled = ctx.temp(f"{node.output[0]}_c_scaled", ctx.shape(c_name))
        ctx.emit(
            "MUL",
            [addend, ctx.const_tensor(f"{scaled}_beta", beta)],
            [scaled],
            fused_activation_function="NONE",
        )
        addend = scaled
    ctx.emit(
        "ADD", [fc, addend], [ctx.output(node.output[0], L.PLAIN)], fused_activation_function="NONE"
    )


@converter(
    "MatMul",
    emits="FULLY_CONNECTED when B is a constant 2-D matrix (a following Add folds into its bias); else BATCH_MATMUL",
)
def convert_matmul(node: onnx.NodeProto, ctx: ConversionContext) -> None:
    b = ctx.const(node.input[1])
    if b is not None and b.ndim == 2:
        x, lay = _fc_input(ctx, node.input[0])
        weight = ctx.const_tensor(
            f"{node.output[0]}_weights", L.fc_weight_for_input(b.astype(np.float32).T, lay)
        )
        keep = len(ctx.shape(node.input[0])) > 2
        y = ctx.output(node.output[0], L.PLAIN)
        ctx.emit(
            "FULLY_CONNECTED",
            [x, weight, None],
            [y],
            fused_activation_function="NONE",
            keep_num_dims=keep,
        )
        return
    ins = [ctx.tensor(i, L.PLAIN) for i in node.input[:2]]
    ctx.emit("BATCH_MATMUL", ins, [ctx.output(node.output[0], L.PLAIN)], adj_x=False, adj_y=False)
