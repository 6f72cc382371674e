"""TFLite reductions: ReduceMean/Max/Min/Sum/Prod -> MEAN / REDUCE_MAX / REDUCE_MIN / SUM / REDUCE_PROD.

Axes come from the attribute (opset < 18) or the second input (opset 18) and are mapped
to NHWC positions when the input is held in NHWC.
"""

from __future__ import annotations

import onnx

from exporter.tflite import layout as L
from exporter.tflite.context import ConversionContext
from exporter.tflite.registry import converter


def _axes(node: onnx.NodeProto, ctx: ConversionContext) -> list[int] | None:
    """Normalized ONNX axes; None means 'leave the tensor alone' (noop_with_empty_axes)."""
    a = ctx.attrs(node)
    rank = len(ctx.shape(node.input[0]))
    if len(node.input) > 1 and node.input[1]:
        axes = [int(v) for v in ctx.const(node.input[1]).reshape(-1)]
    else:
        axes = list(a.get("axes", []))
    if not axes:
        return None if int(a.get("noop_with_empty_axes", 0)) else list(range(rank))
    return sorted(L.normalize_axis(ax, rank) for ax in axes)


def _check_reduce(node: onnx.NodeProto, ctx: ConversionContext) -> str | None:
    if len(node.input) > 1 and node.input[1] and ctx.const(node.input[1]) is None:
        return "axes must be a constant"
    return None


def _reduce(onnx_op: str, tfl_op: str) -> None:
    def convert(node: onnx.NodeProto, ctx: ConversionContext) -> None:
        axes = _axes(node, ctx)
        src, dst = node.input[0], node.output[0]
        lay = ctx.layout(src)
        if axes is None:
            ctx.emit("IDENTITY", [ctx.tensor(src, lay)], [ctx.output(dst, lay)])
            return
        if lay.kind == "flat_hwc" and 1 not in axes:
            lay = L.PLAIN  # column order matters unless the columns are reduced away
        keep = bool(int(ctx.attrs(node).get("keepdims", 1)))
        x = ctx.tensor(src, lay)
        tfl_axes = sorted(L.nhwc_axis(ax) for ax in axes) if lay == L.NHWC else axes
        axes_t = ctx.const_tensor(f"{dst}_axes", tfl_axes, "int32")
        if keep:
            out_lay = lay if lay.kind != "flat_hwc" else L.PLAIN
            ctx.emit(tfl_op, [x, axes_t], [ctx.output(dst, out_lay)], keep_dims=True)
            return
        in_shape = ctx.graph.tensors[x].shape
        kept = tuple(d for i, d in enumerate(in_shape) if i not in tfl_axes)
        onnx_in = ctx.shape(src)
        onnx_kept_perm = [i for i in range(len(onnx_in)) if i not in axes]
        if lay == L.NHWC and not L.is_pure_reshape(onnx_in, L.NCHW_TO_NHWC):
            nhwc_kept = [i for i in L.NCHW_TO_NHWC if i not in axes]
            if [onnx_in[i] for i in nhwc_kept if onnx_in[i] != 1] != [
                onnx_in[i] for i in onnx_kept_perm if onnx_in[i] != 1
            ]:
                # The surviving dims come out in NHWC order; reduce with keep_dims, then
                # go back to NCHW so the final reshape sees ONNX order.
                reduced = ctx.temp(
                    f"{dst}_keep", tuple(1 if i in tfl_axes else d for i, d in enumerate(in_shape))
                )
                ctx.emit(tfl_op, [x, axes_t], [reduced], keep_dims=True)
                nchw = ctx.permute(reduced, ctx.graph.tensors[reduced].shape, L.NHWC_TO_NCHW)
                ctx.bind(dst, ctx.reshape(nchw, ctx.shape(dst)), L.PLAIN)
                return
        reduced = ctx.temp(f"{dst}_reduced", kept)
        ctx.emit(tfl_op, [x, axes_t], [reduced], keep_dims=False)
        ctx.bind(dst, ctx.reshape(reduced, ctx.shape(dst)), L.PLAIN)

    converter(
        onnx_op, emits=f"{tfl_op} (axes attribute or input, keepdims 0/1)", check=_check_reduce
    )(convert)


for _onnx_op, _tfl_op in [
    ("ReduceMean", "MEAN"),
    ("ReduceMax", "REDUCE_MAX"),
    ("ReduceMin", "REDUCE_MIN"),
    ("ReduceSum", "SUM"),
    ("ReduceProd", "REDUCE_PROD"),
]:
    _reduce(_onnx_op, _tfl_op)
