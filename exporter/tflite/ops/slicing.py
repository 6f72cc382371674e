"""TFLite slicing ops: Split -> SPLIT / SLICE, Slice -> SLICE / STRIDED_SLICE, Gather.

All three only pick elements, so they run in whatever layout their input already has: an NHWC
activation is sliced as NHWC with the ONNX axis mapped (a channel split is a split of the last
NHWC axis), never transposed. The encodings are the ones XNNPACK runs where one exists: it takes
SLICE, CONCATENATION and a SPLIT into 2-4 equal parts, but not SPLIT_V, GATHER or a
STRIDED_SLICE with steps. So a Gather with constant indices is a SLICE for a contiguous run,
SLICEs + CONCATENATION for a few runs, a STRIDED_SLICE for many evenly spaced indices, and a
GATHER otherwise.
"""

from __future__ import annotations

import numpy as np
import onnx

from exporter.tflite import layout as L
from exporter.tflite.context import ConversionContext
from exporter.tflite.ops.shape import emit_reshape
from exporter.tflite.registry import converter


def _layout(ctx: ConversionContext, name: str) -> L.Layout:
    """The layout a pure element selection on ``name`` runs in: NHWC stays, flat_hwc does not
    (its columns are not in ONNX order, so an ONNX column range is not a stored range)."""
    lay = ctx.layout(name)
    return L.NHWC if lay == L.NHWC else L.PLAIN


def _stored_axis(axis: int, lay: L.Layout) -> int:
    return L.nhwc_axis(axis) if lay == L.NHWC else axis


def _to_stored(values: list[int], lay: L.Layout) -> list[int]:
    """A per-ONNX-axis list reordered to the stored tensor's axes."""
    return list(L.permute_shape(values, L.NCHW_TO_NHWC)) if lay == L.NHWC else list(values)


# ----- Split ----------------------------------------------------------------------------------


def _check_split(node: onnx.NodeProto, ctx: ConversionContext) -> str | None:
    if len(node.input) > 1 and node.input[1] and ctx.const(node.input[1]) is None:
        return "the split sizes must be a constant"
    return None


def _emit_slices(
    ctx: ConversionContext, x: str, outs: list[str], sizes: list[int], axis: int
) -> None:
    """One SLICE per part: XNNPACK takes SLICE but neither SPLIT_V nor a SPLIT into more than
    four, and each part is the same copy either way."""
    shape = ctx.graph.tensors[x].shape
    start = 0
    for out, size in zip(outs, sizes, strict=True):
        begin = [0] * len(shape)
        begin[axis] = start
        ctx.emit(
            "SLICE",
            [
                x,
                ctx.const_tensor(f"{out}_begin", begin, "int32"),
                ctx.const_tensor(f"{out}_size", list(ctx.graph.tensors[out].shape), "int32"),
            ],
            [out],
        )
        start += size


@converter(
    "Split",
    emits="SPLIT (2-4 equal parts), else one SLICE per part; axis mapped to NHWC, no TRANSPOSE",
    check=_check_split,
)
def convert_split(node: onnx.NodeProto, ctx: ConversionContext) -> None:
    src = node.input[0]
    rank = len(ctx.shape(src))
    axis = L.normalize_axis(int(ctx.attrs(node).get("axis", 0)), rank)
    lay = _layout(ctx, src)
    x = ctx.tensor(src, lay)
    # Shape inference already resolved split sizes / num_outputs into the output shapes.
    names = [o for o in node.output if o]
    sizes = [ctx.shape(o)[axis] for o in names]
    outs = [ctx.output(o, lay) for o in names]
    if len(outs) == 1:
        ctx.emit("IDENTITY", [x], outs)
        return
    tfl_axis = _stored_axis(axis, lay)
    if len(set(sizes)) == 1 and len(outs) <= 4:
        axis_t = ctx.const_tensor(f"{outs[0]}_axis", np.int32(tfl_axis), "int32")
        ctx.emit("SPLIT", [axis_t, x], outs, num_splits=len(outs))
    else:
        _emit_slices(ctx, x, outs, sizes, tfl_axis)


# ----- Slice ----------------------------------------------------------------------------------


def _slice_inputs(node: onnx.NodeProto, ctx: ConversionContext) -> list[np.ndarray | None]:
    """starts, ends, axes, steps as arrays (None when absent); opset < 10 keeps them in attrs."""
    if len(node.input) == 1:
        a = ctx.attrs(node)
        return [
            np.asarray(a[k], np.int64) if k in a else None for k in ("starts", "ends", "axes")
        ] + [None]
    found: list[np.ndarray | None] = []
    for i in range(1, 5):
        name = node.input[i] if i < len(node.input) else ""
        found.append(ctx.const(name).reshape(-1).astype(np.int64) if name else None)
    return found


def _check_slice(node: onnx.NodeProto, ctx: ConversionContext) -> str | None:
    if any(n and ctx.const(n) is None for n in node.input[1:]):
        return "starts, ends, axes and steps must be constants"
    steps = _slice_inputs(node, ctx)[3]
    if steps is not None and (steps == 0).any():
        return "a step of 0 is invalid"
    return None


def _slice_ranges(
    node: onnx.NodeProto, ctx: ConversionContext
) -> tuple[list[int], list[int], list[int]]:
    """Per ONNX axis (begin, end, step), clamped like ONNX (Python's slice rules agree: an end
    of INT64_MAX is the axis end, a negative start counts from the end)."""
    shape = ctx.shape(node.input[0])
    starts, ends, axes, steps = _slice_inputs(node, ctx)
    assert starts is not None and ends is not None
    rank = len(shape)
    begin, end, step = [0] * rank, list(shape), [1] * rank
    axes_list = list(range(len(starts))) if axes is None else list(axes)
    for i, ax in enumerate(axes_list):
        ax = L.normalize_axis(int(ax), rank)
        st = 1 if steps is None else int(steps[i])
        begin[ax], end[ax], step[ax] = slice(int(starts[i]), int(ends[i]), st).indices(shape[ax])
    return begin, end, step


def emit_strided(
    ctx: ConversionContext,
    x: str,
    y: str,
    ranges: tuple[list[int], list[int], list[int]],
) -> None:
    """``y = x[begin:end:step]`` per stored axis: SLICE when every step is 1."""
    begin, end, step = ranges
    if all(s == 1 for s in step):
        size = [e - b for b, e in zip(begin, end, strict=True)]
        ctx.emit(
            "SLICE",
            [
                x,
                ctx.const_tensor(f"{y}_begin", begin, "int32"),
                ctx.const_tensor(f"{y}_size", size, "int32"),
            ],
            [y],
        )
        return
    # A reverse slice that runs past index 0 ends at -1, which TFLite would read as "the last
    # element": the end_mask bit says "to the end of the axis" instead.
    end_mask = sum(
        1 << i for i, (e, s) in enumerate(zip(end, step, strict=True)) if s < 0 and e < 0
    )
    ctx.emit(
        "STRIDED_SLICE",
        [
            x,
            ctx.const_tensor(f"{y}_begin", begin, "int32"),
            ctx.const_tensor(f"{y}_end", [max(e, 0) for e in end], "int32"),
            ctx.const_tensor(f"{y}_strides", step, "int32"),
        ],
        [y],
        begin_mask=0,
        end_mask=end_mask,
        ellipsis_mask=0,
        new_axis_mask=0,
        shrink_axis_mask=0,
        offset=False,
    )


@converter(
    "Slice",
    emits="SLICE (steps 1) / STRIDED_SLICE; constant starts/ends/axes/steps, axes mapped to NHWC",
    check=_check_slice,
)
def convert_slice(node: onnx.NodeProto, ctx: ConversionContext) -> None:
    src, dst = node.input[0], node.output[0]
    lay = _layout(ctx, src)
    ranges = _slice_ranges(node, ctx)
    x = ctx.tensor(src, lay)
    y = ctx.output(dst, lay)
    emit_strided(ctx, x, y, tuple(_to_stored(r, lay) for r in ranges))  # type: ignore[arg-type]


# ----- Gather ---------------------------------------------------------------------------------


def _check_gather(node: onnx.NodeProto, ctx: ConversionContext) -> str | None:
    indices = ctx.const(node.input[1])
    if indices is None:
        return (
            "the indices must be a constant (a data-dependent gather has no TFLite lowering here)"
        )
    return "empty indices (a zero-size output) are not supported" if indices.size == 0 else None


def _as_range(idx: np.ndarray) -> tuple[int, int, int] | None:
    """(begin, end, step) when the 1-D indices are evenly spaced and increasing."""
    if idx.size == 1:
        return int(idx[0]), int(idx[0]) + 1, 1
    step = int(idx[1] - idx[0])
    if step <= 0 or not (np.diff(idx) == step).all():
        return None
    return int(idx[0]), int(idx[-1]) + 1, step


def _gather_as_slice(
    ctx: ConversionContext, src: str, dst: str, axis: int, span: tuple[int, int, int]
) -> None:
    """Gather of evenly spaced indices: a (strided) slice, then a reshape if the axis goes."""
    shape = ctx.shape(src)
    lay = _layout(ctx, src)
    begin, end, step = [0] * len(shape), list(shape), [1] * len(shape)
    begin[axis], end[axis], step[axis] = span
    kept = list(shape)
    kept[axis] = len(range(*span))
    ranges = tuple(_to_stored(r, lay) for r in (begin, end, step))
    if tuple(kept) == ctx.shape(dst):
        emit_strided(ctx, ctx.tensor(src, lay), ctx.output(dst, lay), ranges)  # type: ignore[arg-type]
        return
    # A scalar index drops the axis: slice into a value that keeps it, then reshape it away
    # (free when the removed axis does not change the memory order, e.g. channel 0 of NHWC).
    sliced = ctx.declare(ctx.graph.unique_name(f"{dst}_sliced"), tuple(kept))
    emit_strided(ctx, ctx.tensor(src, lay), ctx.output(sliced, lay), ranges)  # type: ignore[arg-type]
    emit_reshape(ctx, sliced, dst)


#: Up to this many runs of consecutive indices, a Gather is SLICEs + one CONCATENATION (XNNPACK
#: runs both; it has no GATHER).
MAX_RUNS = 4


def _runs(idx: np.ndarray) -> list[tuple[int, int]]:
    """``idx`` as maximal runs [start, end) of consecutive increasing indices."""
    cuts = np.flatnonzero(np.diff(idx) != 1) + 1
    return [(int(part[0]), int(part[-1]) + 1) for part in np.split(idx, cuts)]


def _gather_runs(
    ctx: ConversionContext, src: str, dst: str, axis: int, runs: list[tuple[int, int]]
) -> None:
    lay = _layout(ctx, src)
    shape = ctx.shape(src)
    x = ctx.tensor(src, lay)
    parts = []
    for start, end in runs:
        begin, stop = [0] * len(shape), list(shape)
        begin[axis], stop[axis] = start, end
        part = ctx.temp(
            f"{dst}_run", L.stored_shape([*shape[:axis], end - start, *shape[axis + 1 :]], lay)
        )
        ranges = tuple(_to_stored(r, lay) for r in (begin, stop, [1] * len(shape)))
        emit_strided(ctx, x, part, ranges)  # type: ignore[arg-type]
        parts.append(part)
    ctx.emit(
        "CONCATENATION",
        parts,
        [ctx.output(dst, lay)],
        axis=_stored_axis(axis, lay),
        fused_activation_function="NONE",
    )


@converter(
    "Gather",
    emits="SLICE for a run of constant indices (+ RESHAPE for a scalar "
    "index), SLICEs + CONCATENATION for up to 4 runs of consecutive indices, STRIDED_SLICE for "
    "more evenly spaced ones, else GATHER; axis mapped to NHWC",
    check=_check_gather,
)
def convert_gather(node: onnx.NodeProto, ctx: ConversionContext) -> None:
    src, dst = node.input[0], node.output[0]
    shape = ctx.shape(src)
    axis = L.normalize_axis(int(ctx.attrs(node).get("axis", 0)), len(shape))
    idx = ctx.const(node.input[1]).astype(np.int64)
    idx = np.where(idx < 0, idx + shape[axis], idx)
    # Indices of any rank that are one run (torch's as_strided flatten writes arange(C) shaped
    # [1, C, 1, 1]) are a SLICE and a RESHAPE to the gathered shape, which XNNPACK runs.
    span = _as_range(idx.reshape(-1))
    if span is not None and idx.ndim > 1 and span[2] != 1:
        span = None
    runs = _runs(idx) if idx.ndim == 1 else []
    if span is not None and (span[2] == 1 or len(runs) > MAX_RUNS):
        _gather_as_slice(ctx, src, dst, axis, span)
        return
    if 0 < len(runs) <= MAX_RUNS:
        _gather_runs(ctx, src, dst, axis, runs)
        return
    # Indices of rank 1 keep the rank, so NHWC can stay; higher ranks reshape the output.
    lay = _layout(ctx, src) if idx.ndim == 1 else L.PLAIN
    ctx.emit(
        "GATHER",
        [ctx.tensor(src, lay), ctx.const_tensor(f"{dst}_indices", idx, "int32")],
        [ctx.output(dst, lay)],
        axis=_stored_axis(axis, lay),
        batch_dims=0,
    )


# ----- GatherND -------------------------------------------------------------------------------


def _check_gather_nd(node: onnx.NodeProto, ctx: ConversionContext) -> str | None:
    # The one GatherND CNNs export, AdaptiveAvgPool2d on a map smaller than its output, is
    # fused before lowering (onnx_spatial.py); reaching pre-flight means this one is not that.
    return (
        "only the GatherND of AdaptiveAvgPool2d on a small map is supported (fused into one "
        "BATCH_MATMUL) and this one is not a per-channel spatial average; use an input size "
        "whose last feature map is at least the pool's output (e.g. 224), or index with slices"
    )


@converter(
    "GatherND",
    emits="only inside torch's AdaptiveAvgPool2d pattern on a map smaller than the output "
    "(with its Transpose / Where / Gather / Add / Div: fused into one BATCH_MATMUL, exact)",
    check=_check_gather_nd,
)
def convert_gather_nd(node: onnx.NodeProto, ctx: ConversionContext) -> None:
    raise ctx.error(_check_gather_nd(node, ctx) or "")
