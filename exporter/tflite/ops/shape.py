"""TFLite shape ops: Reshape / Flatten / Squeeze / Unsqueeze, Transpose, Concat, Pad, Identity / Dropout.

A reshape is free (one RESHAPE) when the NHWC bytes already sit in the order the target
needs; the flatten of an NHWC activation yields a flat_hwc value that a following
FULLY_CONNECTED absorbs. Only a reshape that truly mixes channels with space costs a TRANSPOSE.
A channel shuffle (Reshape -> Transpose -> Reshape) is one CONCATENATION, not a TRANSPOSE.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class _Shuffle:
    """``Reshape(N,g,C/g,H,W) -> Transpose(0,2,1,3,4) -> Reshape(N,C,H,W)``: torch's channel
    shuffle (ShuffleNet), output channel ``i*g + j`` = input channel ``j*(C/g) + i``."""

    nodes: tuple[onnx.NodeProto, onnx.NodeProto, onnx.NodeProto]
    groups: int


def _only_reader(ctx: ConversionContext, name: str) -> onnx.NodeProto | None:
    if name in ctx.onnx.outputs:
        return None
    readers = [n for n in ctx.onnx.nodes if name in n.input]
    return readers[0] if len(readers) == 1 else None


def _producer(ctx: ConversionContext, name: str) -> onnx.NodeProto | None:
    return next((n for n in ctx.onnx.nodes if name in n.output), None)


def _shuffle_from_head(ctx: ConversionContext, head: onnx.NodeProto) -> _Shuffle | None:
    if head.op_type != "Reshape" or len(ctx.shape(head.input[0])) != 4:
        return None
    n, c, h, w = ctx.shape(head.input[0])
    split = ctx.shape(head.output[0])
    if len(split) != 5 or split[0] != n or split[3:] != (h, w) or split[1] * split[2] != c:
        return None
    mid = _only_reader(ctx, head.output[0])
    if mid is None or mid.op_type != "Transpose":
        return None
    if list(ctx.attrs(mid).get("perm", [])) != [0, 2, 1, 3, 4]:
        return None
    tail = _only_reader(ctx, mid.output[0])
    if tail is None or tail.op_type != "Reshape" or ctx.shape(tail.output[0]) != (n, c, h, w):
        return None
    return _Shuffle((head, mid, tail), int(split[1]))


def _shuffle_of(ctx: ConversionContext, node: onnx.NodeProto) -> _Shuffle | None:
    """The channel shuffle ``node`` belongs to (as its first, middle or last node), if any."""
    head: onnx.NodeProto | None = node
    for _ in range(2):
        if head is None or _shuffle_from_head(ctx, head) is not None:
            break
        head = _producer(ctx, head.input[0])
    match = _shuffle_from_head(ctx, head) if head is not None else None
    return match if match is not None and any(n is node for n in match.nodes) else None


def _group_pieces(ctx: ConversionContext, src: str, groups: int) -> list[str]:
    """The ``groups`` channel blocks of ``src`` as NHWC tensors: the inputs of the Concat that
    made it when they are exactly those blocks (ShuffleNet's case, no op needed), else a SPLIT
    (SLICEs past 4 groups)."""
    n, c, h, w = ctx.shape(src)
    made_by = _producer(ctx, src)
    if made_by is not None and made_by.op_type == "Concat":
        parts = [i for i in made_by.input if i]
        on_channels = L.normalize_axis(int(ctx.attrs(made_by)["axis"]), 4) == 1
        blocks = [ctx.shape(i)[1] for i in parts] == [c // groups] * groups
        if on_channels and blocks and all(ctx.const(i) is None for i in parts):
            return [ctx.tensor(i, L.NHWC) for i in parts]
    x, cpg = ctx.tensor(src, L.NHWC), c // groups
    pieces = [ctx.temp(f"{src}_group{j}", (n, h, w, cpg)) for j in range(groups)]
    if groups <= 4:  # XNNPACK's SPLIT takes 2 to 4 outputs
        axis = ctx.const_tensor(f"{src}_group_axis", np.int32(3), "int32")
        ctx.emit("SPLIT", [axis, x], pieces, num_splits=groups)
        return pieces
    size = ctx.const_tensor(f"{src}_group_size", [n, h, w, cpg], "int32")
    for j, piece in enumerate(pieces):
        begin = ctx.const_tensor(f"{piece}_begin", [0, 0, 0, j * cpg], "int32")
        ctx.emit("SLICE", [x, begin, size], [piece])
    return pieces


def _emit_shuffle(ctx: ConversionContext, match: _Shuffle) -> None:
    """Interleave the channel groups with one CONCATENATION on a trailing unit axis: piece j
    as [N, H*W, C/g, 1], concatenated on that axis, is [N, H*W, C/g, g], whose memory order
    is exactly the shuffled NHWC tensor. No TRANSPOSE, and XNNPACK runs every op."""
    head, _, tail = match.nodes
    src, g = head.input[0], match.groups
    n, c, h, w = ctx.shape(src)
    pieces = [ctx.reshape(p, (n, h * w, c // g, 1)) for p in _group_pieces(ctx, src, g)]
    woven = ctx.temp(f"{tail.output[0]}_interleaved", (n, h * w, c // g, g))
    ctx.emit("CONCATENATION", pieces, [woven], axis=3, fused_activation_function="NONE")
    out = ctx.output(tail.output[0], L.NHWC)
    ctx.emit(
        "RESHAPE",
        [woven, ctx.const_tensor(f"{out}_shape", [n, h, w, c], "int32")],
        [out],
        new_shape=[n, h, w, c],
    )


def _convert_reshape(node: onnx.NodeProto, ctx: ConversionContext) -> None:
    shuffle = _shuffle_of(ctx, node) if node.op_type == "Reshape" else None
    if shuffle is not None:
        if node is shuffle.nodes[2]:  # the head and middle emit nothing; the tail does it all
            _emit_shuffle(ctx, shuffle)
        return
    # The target shape comes from shape inference, so all four ops are the same lowering.
    emit_reshape(ctx, node.input[0], node.output[0])


_RESHAPE = "RESHAPE (flatten of NHWC feeds FULLY_CONNECTED with permuted weights; TRANSPOSE only if channels mix"
converter(
    "Reshape",
    emits=f"{_RESHAPE}; a channel shuffle Reshape-Transpose-Reshape is one CONCATENATION)",
)(_convert_reshape)
for _op in ("Flatten", "Squeeze", "Unsqueeze"):
    converter(_op, emits=f"{_RESHAPE})")(_convert_reshape)


@converter(
    "Transpose",
    emits="TRANSPOSE with the perm composed with the NHWC layout (RESHAPE or nothing when possible)",
)
def convert_transpose(node: onnx.NodeProto, ctx: ConversionContext) -> None:
    if _shuffle_of(ctx, node) is not None:
        return  # lowered whole by the shuffle's last Reshape
    src, dst = node.input[0], node.output[0]
    rank = len(ctx.shape(src))
    perm = list(ctx.attrs(node).get("perm", list(reversed(range(rank)))))
    lay = ctx.layout(src)
    if lay == L.NHWC:
        x, perm = ctx.tensor(src, L.NHWC), L.compose(L.NHWC_TO_NCHW, perm)
    else:
        x = ctx.tensor(src, L.PLAIN)
    out_lay = L.NHWC if rank == 4 else L.PLAIN
    if out_lay == L.NHWC and L.is_identity(perm):
        out_lay = L.PLAIN  # NHWC -> channels-last (torch's permute(0, 2, 3, 1)) moves nothing
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
