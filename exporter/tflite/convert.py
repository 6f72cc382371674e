"""The conversion driver: read -> pre-flight -> lower -> passes -> serialize."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import onnx

from exporter.errors import ConversionError, UnsupportedOpsError
from exporter.tflite import fold_qdq
from exporter.tflite import layout as L
from exporter.tflite.context import ConversionContext
from exporter.tflite.int8 import IO_DTYPES, quantize_graph
from exporter.tflite.ir import Graph
from exporter.tflite.onnx_fusion import fuse_patterns
from exporter.tflite.onnx_reader import OnnxGraph, node_label, read_graph
from exporter.tflite.passes import run_passes
from exporter.tflite.precision import to_dynamic_range, to_float16
from exporter.tflite.registry import load_all
from exporter.tflite.storage import DELEGATES, WeightStorage, apply_storage
from exporter.tflite.writer import serialize

INPUT_LAYOUTS = ("nhwc", "nchw")
STORAGES = ("dense", "sparse")
#: What a float ONNX model may become; a QDQ model's precision comes from its own Q/DQ types.
FLOAT_PRECISIONS = ("fp32", "fp16", "dynamic")


def preflight(ctx: ConversionContext) -> None:
    """Collect every node we cannot convert and raise them together."""
    registry = load_all()
    offenders: list[tuple[str, str, str]] = []
    for node in ctx.onnx.nodes:
        label = node_label(node)
        conv = registry.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if conv is None:
            where = f" in domain '{node.domain}'" if node.domain not in ("", "ai.onnx") else ""
            offenders.append((label, node.op_type, f"no TFLite converter{where}"))
            continue
        ctx.node = node
        try:
            reason = _dtype_reason(node, ctx) or (conv.check(node, ctx) if conv.check else None)
        except ConversionError as exc:
            reason = str(exc)
        if reason:
            offenders.append((label, node.op_type, reason))
    ctx.node = None
    if offenders:
        raise UnsupportedOpsError(offenders)


def _dtype_reason(node: onnx.NodeProto, ctx: ConversionContext) -> str | None:
    for out in node.output:
        elem = (
            ctx.onnx.elem_types.get(out, onnx.TensorProto.FLOAT) if out else onnx.TensorProto.FLOAT
        )
        if elem != onnx.TensorProto.FLOAT:
            return f"output '{out}' is {onnx.TensorProto.DataType.Name(elem).lower()}; only float32 tensors are supported"
    for name in list(node.input) + list(node.output):
        if name and name not in ctx.onnx.shapes:
            return f"tensor '{name}' has no static shape after shape inference"
    return None


def _bind_inputs(ctx: ConversionContext, input_layout: str) -> None:
    for name in ctx.onnx.inputs:
        shape = ctx.shape(name)
        lay = L.NHWC if len(shape) == 4 and input_layout == "nhwc" else L.PLAIN
        tensor = ctx.output(name, lay)
        ctx.graph.inputs.append(tensor)


def _bind_outputs(ctx: ConversionContext, input_layout: str) -> None:
    graph = ctx.graph
    for name in ctx.onnx.outputs:
        rank = len(ctx.shape(name))
        # Rank-4 outputs follow the input convention; everything else is plain ONNX order.
        want = L.NHWC if rank == 4 and input_layout == "nhwc" else L.PLAIN
        tensor = ctx.tensor(name, want)
        if tensor != name:
            if name in graph.tensors:
                graph.rename(name, graph.unique_name(f"{name}_internal"))
            graph.rename(tensor, name)
        graph.outputs.append(name)


def lower(
    onnx_graph: OnnxGraph, input_layout: str = "nhwc", qdq_info: fold_qdq.QdqInfo | None = None
) -> Graph:
    """Pre-flight, then lower every node and run the passes; returns the final IR graph.

    With ``qdq_info`` the float graph comes out annotated with int8 parameters, ready for
    ``int8.quantize_graph``.
    """
    if input_layout not in INPUT_LAYOUTS:
        raise ValueError(f"input_layout must be one of {INPUT_LAYOUTS}, got {input_layout!r}")
    ctx = ConversionContext(fuse_patterns(onnx_graph))
    if qdq_info is not None:
        ctx.qparams, ctx.float_nodes = qdq_info.params, qdq_info.float_nodes
    preflight(ctx)
    registry = load_all()
    _bind_inputs(ctx, input_layout)
    for node in onnx_graph.nodes:
        ctx.node = node
        try:
            registry[node.op_type](node, ctx)
        except ConversionError:
            raise
        except Exception as exc:
            raise ctx.error(f"conversion failed: {type(exc).__name__}: {exc}") from exc
    ctx.node = None
    _bind_outputs(ctx, input_layout)
    return run_passes(ctx.graph)


@dataclass
class ConvertInfo:
    precision: str = "fp32"  # "fp32" | "fp16" | "dynamic" | "int8" | "int16x8"
    io_dtype: str = "float32"
    float_fallback_ops: list[str] = field(default_factory=list)
    normalization: str | None = None
    tensors: list[WeightStorage] | None = None  # storage="sparse": the per-weight table


def check_storage(storage: str, delegate: str) -> None:
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
    if delegate not in DELEGATES:
        raise ValueError(f"delegate must be one of {DELEGATES}, got {delegate!r}")


def lower_model(
    model: onnx.ModelProto,
    input_layout: str = "nhwc",
    *,
    io_dtype: str = "float32",
    normalization: tuple[Sequence[float], Sequence[float]] | None = None,
    precision: str = "fp32",
    delegate: str = "xnnpack",
) -> tuple[Graph, ConvertInfo]:
    """ONNX -> the final IR graph, not yet serialized; a QDQ model becomes full-integer
    (int8, or int16x8 when its activations are int16).

    ``precision`` applies to a float model only: "fp16" stores float16 weights, "dynamic"
    int8 weights on the hybrid kernels (see ``precision.py``). One lowering can be stored
    several ways with :func:`store`. ``delegate`` ("xnnpack" or "none") picks the int8
    encodings the target's kernels run (see ``int8.quantize_graph``).
    """
    if precision not in FLOAT_PRECISIONS:
        raise ValueError(f"precision must be one of {FLOAT_PRECISIONS}, got {precision!r}")
    if delegate not in DELEGATES:
        raise ValueError(f"delegate must be one of {DELEGATES}, got {delegate!r}")
    if io_dtype not in IO_DTYPES:
        raise ValueError(f"io_dtype must be one of {IO_DTYPES}, got {io_dtype!r}")
    if (io_dtype == "uint8") != (normalization is not None):
        raise ValueError(
            "normalization=(mean, std) is required with io_dtype='uint8' and only then"
        )
    if io_dtype == "uint8" and input_layout != "nhwc":
        raise ValueError("io_dtype='uint8' takes raw NHWC camera pixels; use input_layout='nhwc'")
    if not fold_qdq.has_qdq(model):
        if io_dtype != "float32":
            raise ValueError(
                f"io_dtype={io_dtype!r} needs a quantized (QDQ) ONNX model; this one is float"
            )
        graph = lower(read_graph(model), input_layout)
        if precision == "fp16":
            return to_float16(graph), ConvertInfo("fp16")
        if precision == "dynamic":
            graph, left_float = to_dynamic_range(graph)
            return graph, ConvertInfo("dynamic", float_fallback_ops=left_float)
        return graph, ConvertInfo()
    if precision != "fp32":
        raise ValueError(f"precision={precision!r} needs a float ONNX model; this one is QDQ")
    act_dtype = fold_qdq.activation_dtype(model)
    if act_dtype == "int16" and io_dtype != "float32":
        raise ValueError("int16x8 models take and give float32; use io_dtype='float32'")
    weights = fold_qdq.quantized_weight_names(model)
    onnx_graph = read_graph(model)
    info = fold_qdq.fold_qdq(onnx_graph, weights)
    graph, report = quantize_graph(
        lower(onnx_graph, input_layout, info), io_dtype, normalization, act_dtype, delegate
    )
    name = "int16x8" if act_dtype == "int16" else "int8"
    return graph, ConvertInfo(name, io_dtype, report.float_fallback_ops, report.normalization)


def store(
    graph: Graph, storage: str = "dense", delegate: str = "xnnpack"
) -> tuple[bytes, Graph, list[WeightStorage] | None]:
    """Serialize ``graph`` with ``storage``: the bytes, the graph written, and for "sparse" the
    per-weight table. "sparse" re-encodes a copy, so ``graph`` can be stored both ways."""
    check_storage(storage, delegate)
    if storage == "dense":
        return serialize(graph), graph, None
    stored = graph.copy()
    rows = apply_storage(stored, delegate)
    return serialize(stored), stored, rows


def convert(
    model: onnx.ModelProto,
    input_layout: str = "nhwc",
    *,
    io_dtype: str = "float32",
    normalization: tuple[Sequence[float], Sequence[float]] | None = None,
    storage: str = "dense",
    delegate: str = "xnnpack",
    precision: str = "fp32",
) -> tuple[bytes, Graph, ConvertInfo]:
    """ONNX -> .tflite bytes; a model with QuantizeLinear/DequantizeLinear becomes full-integer.

    ``storage="sparse"`` stores each weight sparse where that is smaller and the consuming
    kernel accepts it under ``delegate`` (see ``storage.py``).
    """
    check_storage(storage, delegate)
    graph, info = lower_model(
        model,
        input_layout,
        io_dtype=io_dtype,
        normalization=normalization,
        precision=precision,
        delegate=delegate,
    )
    data, stored, info.tensors = store(graph, storage, delegate)
    return data, stored, info
