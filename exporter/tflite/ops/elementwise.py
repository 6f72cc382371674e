"""TFLite elementwise: broadcasting binary ops (ADD/SUB/MUL/DIV/MAXIMUM/MINIMUM) and plain unary maps.

The result is computed in NHWC whenever a rank-4 operand already is, so constants and
lower-rank operands are rewritten to match (a [C,1,1] bias becomes [1,1,1,C]) instead of
transposing the activation back.
"""

from __future__ import annotations

import numpy as np
import onnx

from exporter.tflite import layout as L
from exporter.tflite.context import ConversionContext
from exporter.tflite.registry import CheckFn, converter

_FUSABLE = {"ADD", "SUB", "MUL", "DIV"}  # ops whose options carry fused_activation_function


# An operand is an ONNX value name or a constant computed by the converter (e.g. folded BN).
Operand = str | np.ndarray


def _const_of(ctx: ConversionContext, operand: Operand) -> np.ndarray | None:
    return operand if isinstance(operand, np.ndarray) else ctx.const(operand)


def _target_layout(
    ctx: ConversionContext, operands: list[Operand], out_shape: tuple[int, ...]
) -> L.Layout:
    live = [n for n in operands if _const_of(ctx, n) is None]
    layouts = [ctx.layout(n) for n in live]  # type: ignore[arg-type]
    if len(out_shape) == 4 and L.NHWC in layouts:
        return L.NHWC
    flats = {lay for lay in layouts if lay.kind == "flat_hwc"}
    if len(flats) == 1 and all(ctx.shape(n) == out_shape for n in live):  # type: ignore[arg-type]
        return flats.pop()
    return L.PLAIN


def _operand(ctx: ConversionContext, operand: Operand, rank: int, target: L.Layout) -> str | None:
    const = _const_of(ctx, operand)
    if const is not None:
        value = L.broadcast_operand(const.astype(np.float32), rank, target)
        hint = operand if isinstance(operand, str) else "const"
        return None if value is None else ctx.const_tensor(hint, value)
    assert isinstance(operand, str)
    shape = ctx.shape(operand)
    if target == L.NHWC and len(shape) < 4:
        padded = (1,) * (4 - len(shape)) + tuple(shape)
        return ctx.permute(
            ctx.reshape(ctx.tensor(operand, L.PLAIN), padded), padded, L.NCHW_TO_NHWC
        )
    return ctx.tensor(operand, target)


def emit_binary(ctx: ConversionContext, op: str, operands: list[Operand], out_name: str) -> None:
    """Lower a numpy-broadcasting binary op; shared by every two-operand converter."""
    out_shape = ctx.shape(out_name)
    target = _target_layout(ctx, operands, out_shape)
    inputs = [_operand(ctx, n, len(out_shape), target) for n in operands]
    if any(i is None for i in inputs):
        target = L.PLAIN  # a constant that only spans part of a flat_hwc row
        inputs = [_operand(ctx, n, len(out_shape), target) for n in operands]
    options = {"fused_activation_function": "NONE"} if op in _FUSABLE else {}
    ctx.emit(op, inputs, [ctx.output(out_name, target)], **options)


def _binary_check(onnx_op: str) -> CheckFn:
    def check(node: onnx.NodeProto, ctx: ConversionContext) -> str | None:
        return (
            None
            if len(node.input) == 2
            else f"{onnx_op} with {len(node.input)} inputs is not supported"
        )

    return check


def _binary(onnx_op: str, tfl_op: str) -> None:
    def convert(node: onnx.NodeProto, ctx: ConversionContext) -> None:
        emit_binary(ctx, tfl_op, [node.input[0], node.input[1]], node.output[0])

    converter(
        onnx_op,
        emits=f"{tfl_op} (numpy broadcasting, constants re-laid out for NHWC)",
        check=_binary_check(onnx_op),
    )(convert)


for _onnx_op, _tfl_op in [
    ("Add", "ADD"),
    ("Sub", "SUB"),
    ("Mul", "MUL"),
    ("Div", "DIV"),
    ("Max", "MAXIMUM"),
    ("Min", "MINIMUM"),
]:
    _binary(_onnx_op, _tfl_op)


def _exponent(node: onnx.NodeProto, ctx: ConversionContext) -> float | None:
    value = ctx.const(node.input[1])
    if value is None or value.size != 1 or ctx.shape(node.output[0]) != ctx.shape(node.input[0]):
        return None
    return float(value.reshape(-1)[0])


@converter(
    "Pow",
    emits="MUL for a constant exponent 2 or 3, SQRT for 0.5 (XNNPACK has no POW), else POW",
    check=_binary_check("Pow"),
)
def convert_pow(node: onnx.NodeProto, ctx: ConversionContext) -> None:
    x, y = node.input[0], node.output[0]
    exponent = _exponent(node, ctx)
    if exponent == 2.0:
        emit_binary(ctx, "MUL", [x, x], y)  # x*x is what pow(x, 2) rounds to
    elif exponent == 3.0:
        square = ctx.declare(f"{y}__square", ctx.shape(x))
        emit_binary(ctx, "MUL", [x, x], square)
        emit_binary(ctx, "MUL", [square, x], y)
    elif exponent == 0.5:
        emit_unary(ctx, "SQRT", x, y)
    else:
        emit_binary(ctx, "POW", [x, node.input[1]], y)


def emit_unary(ctx: ConversionContext, op: str, src: str, dst: str, **options: object) -> None:
    """A layout-agnostic one-input op: the result keeps the input's layout."""
    lay = ctx.layout(src)
    x = ctx.tensor(src, lay)
    ctx.emit(op, [x], [ctx.output(dst, lay)], **options)


def register_unary(onnx_op: str, tfl_op: str) -> None:
    """Register ONNX ``onnx_op`` as the one-to-one, layout-keeping TFLite ``tfl_op``."""

    def convert(node: onnx.NodeProto, ctx: ConversionContext) -> None:
        emit_unary(ctx, tfl_op, node.input[0], node.output[0])

    converter(onnx_op, emits=tfl_op)(convert)


for _onnx_op, _tfl_op in [
    ("Abs", "ABS"),
    ("Neg", "NEG"),
    ("Exp", "EXP"),
    ("Log", "LOG"),
    ("Sqrt", "SQRT"),
    ("Floor", "FLOOR"),
]:
    register_unary(_onnx_op, _tfl_op)
