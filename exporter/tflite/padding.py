"""Spatial padding for conv and pool: when ONNX pads are TFLite SAME, VALID, or need a PAD op.

TFLite SAME pads ``total = max((ceil(in/s) - 1) * s + k_eff - in, 0)`` with the odd pixel at
the *end*. ONNX pads are explicit, so e.g. stride 2 with pads [1, 1, 1, 1] on an even size is
not SAME (SAME would be [0, 1]) and gets an explicit PAD followed by a VALID op.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from exporter.tflite.context import ConversionContext


def same_pads(size: int, k_eff: int, stride: int) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + k_eff - size, 0)
    return total // 2, total - total // 2


def onnx_pads(
    a: dict[str, Any],
    in_hw: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
) -> list[int]:
    """ONNX pads [top, left, bottom, right], resolving ``auto_pad``."""
    auto = a.get("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        return list(a.get("pads", [0, 0, 0, 0]))
    if auto == "VALID":
        return [0, 0, 0, 0]
    begins, ends = [], []
    for size, k, s, d in zip(in_hw, kernel, strides, dilations, strict=True):
        lo, hi = same_pads(size, (k - 1) * d + 1, s)
        if auto == "SAME_LOWER":
            lo, hi = hi, lo
        begins.append(lo)
        ends.append(hi)
    return begins + ends


def choose_padding(
    in_hw: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    pads: Sequence[int],
) -> tuple[str, list[int] | None]:
    """(TFLite padding, pads still to apply with a PAD op or None)."""
    if not any(pads):
        return "VALID", None
    for i, (size, k, s, d) in enumerate(zip(in_hw, kernel, strides, dilations, strict=True)):
        if (pads[i], pads[i + 2]) != same_pads(size, (k - 1) * d + 1, s):
            return "VALID", list(pads)
    return "SAME", None


def emit_pad(ctx: ConversionContext, x: str, pads: Sequence[int], value: float = 0.0) -> str:
    """PAD (or PADV2 for a non-zero fill) an NHWC tensor by ONNX-order pads [t, l, b, r]."""
    n, h, w, c = ctx.graph.tensors[x].shape
    top, left, bottom, right = (int(p) for p in pads)
    out = ctx.temp(f"{x}_padded", (n, h + top + bottom, w + left + right, c))
    paddings = ctx.const_tensor(
        f"{out}_paddings", [[0, 0], [top, bottom], [left, right], [0, 0]], "int32"
    )
    if value == 0.0:
        ctx.emit("PAD", [x, paddings], [out])
    else:
        ctx.emit(
            "PADV2", [x, paddings, ctx.const_tensor(f"{out}_value", [value], "float32")], [out]
        )
    return out
