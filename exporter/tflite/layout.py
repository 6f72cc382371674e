"""NCHW (ONNX) <-> NHWC (TFLite) layout rules: the single home of every axis and weight permutation.

Every ONNX value is carried in one of three layouts:

* ``PLAIN``: the TFLite tensor holds the ONNX tensor unchanged.
* ``NHWC``: a rank-4 ONNX tensor ``[N, C, H, W]`` stored as ``[N, H, W, C]``.
* ``flat_hwc(c, h, w)``: a rank-2 ``[N, C*H*W]`` flatten of an NHWC tensor whose columns are
  in (h, w, c) order. This is what a plain RESHAPE of an NHWC activation gives; a following
  FULLY_CONNECTED absorbs it by permuting its weight columns, so CNN heads need no TRANSPOSE.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

NCHW_TO_NHWC: tuple[int, ...] = (0, 2, 3, 1)
NHWC_TO_NCHW: tuple[int, ...] = (0, 3, 1, 2)


@dataclass(frozen=True)
class Layout:
    kind: str  # "plain" | "nhwc" | "flat_hwc"
    chw: tuple[int, int, int] | None = None  # only for flat_hwc

    def __str__(self) -> str:
        return self.kind if self.chw is None else f"{self.kind}{self.chw}"


PLAIN = Layout("plain")
NHWC = Layout("nhwc")


def flat_hwc(c: int, h: int, w: int) -> Layout:
    # When C == 1 or H*W == 1 both column orders coincide, so there is nothing to track.
    if c == 1 or h * w == 1:
        return PLAIN
    return Layout("flat_hwc", (c, h, w))


def normalize_axis(axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise ValueError(f"axis {axis} out of range for rank {rank}")
    return axis % rank


def nhwc_axis(axis: int, rank: int = 4) -> int:
    """Position in the NHWC tensor of ONNX (NCHW) axis ``axis``."""
    return NCHW_TO_NHWC.index(normalize_axis(axis, rank))


def permute_shape(shape: Sequence[int], perm: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(shape[p]) for p in perm)


def to_nhwc_shape(shape: Sequence[int]) -> tuple[int, ...]:
    return permute_shape(shape, NCHW_TO_NHWC)


def stored_shape(shape: Sequence[int], layout: Layout) -> tuple[int, ...]:
    """Shape of the TFLite tensor holding an ONNX value of ``shape`` in ``layout``."""
    return to_nhwc_shape(shape) if layout == NHWC else tuple(int(d) for d in shape)


def compose(first: Sequence[int], second: Sequence[int]) -> tuple[int, ...]:
    """Perm equal to transposing by ``first`` then by ``second``."""
    return tuple(int(first[i]) for i in second)


def is_identity(perm: Sequence[int]) -> bool:
    return all(i == p for i, p in enumerate(perm))


def is_pure_reshape(shape: Sequence[int], perm: Sequence[int]) -> bool:
    """True when transposing ``shape`` by ``perm`` only moves size-1 dims (memory unchanged)."""
    moved = [p for p in perm if shape[p] != 1]
    return moved == sorted(moved)


def transpose_const(value: np.ndarray, layout: Layout) -> np.ndarray:
    """Bring a rank-4 ONNX constant (or a full-width flat row) into ``layout``."""
    if layout == NHWC:
        return np.transpose(value, NCHW_TO_NHWC)
    if layout.kind == "flat_hwc":
        c, h, w = layout.chw  # type: ignore[misc]
        lead = value.shape[:-1]
        return value.reshape(*lead, c, h, w).swapaxes(-3, -2).swapaxes(-2, -1).reshape(*lead, -1)
    return value


def broadcast_operand(value: np.ndarray, out_rank: int, layout: Layout) -> np.ndarray | None:
    """A constant operand of a broadcasting op, rewritten for an output held in ``layout``.

    Numpy broadcasting aligns trailing dims, so the constant is first padded to the output
    rank; e.g. a ``[C, 1, 1]`` bias becomes ``[1, 1, 1, C]`` for an NHWC activation.
    Returns None when a flat_hwc constant only partially spans the columns (caller falls back).
    """
    value = np.asarray(value)
    if layout == PLAIN or value.ndim == 0:
        return value
    value = value.reshape((1,) * (out_rank - value.ndim) + value.shape)
    if layout.kind == "flat_hwc":
        c, h, w = layout.chw  # type: ignore[misc]
        if value.shape[-1] == 1:
            return value
        if value.shape[-1] != c * h * w:
            return None
    return transpose_const(value, layout)


def conv_weight_ohwi(weight: np.ndarray) -> np.ndarray:
    """ONNX Conv weight [O, I, kh, kw] -> TFLite CONV_2D filter [O, kh, kw, I]."""
    return np.ascontiguousarray(np.transpose(weight, (0, 2, 3, 1)))


def depthwise_weight_1hwo(weight: np.ndarray) -> np.ndarray:
    """ONNX depthwise weight [C*M, 1, kh, kw] -> TFLite DEPTHWISE_CONV_2D filter [1, kh, kw, C*M].

    Both order output channels as ``c * M + m`` (channel c, multiplier m), so no reindexing.
    """
    return np.ascontiguousarray(np.transpose(weight, (1, 2, 3, 0)))


def transpose_conv_weight(weight: np.ndarray) -> np.ndarray:
    """ONNX ConvTranspose weight [I, O, kh, kw] -> TFLite TRANSPOSE_CONV filter [O, kh, kw, I]."""
    return np.ascontiguousarray(np.transpose(weight, (1, 2, 3, 0)))


def fc_weight_for_input(weight_nk: np.ndarray, layout: Layout) -> np.ndarray:
    """FULLY_CONNECTED weights [N_out, K] with columns reordered to match the input's layout."""
    return np.ascontiguousarray(transpose_const(weight_nk, layout))
