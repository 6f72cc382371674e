"""ONNX -> TFLite without TensorFlow: float32 NHWC (or NCHW) models, and full-integer int8
models from QDQ ONNX.

The file format comes from the official TFLite flatbuffer schema (``schema.fbs``) via the
Python object API that LiteRT ships generated as ``ai_edge_litert.schema_py_generated``;
only ``writer.py`` touches it. Layout: ``layout.py``; op lowerings: ``ops/``
(registered in ``registry.py``); op-code versions: ``op_versions.py``; clean-up passes:
``passes.py``; dense / sparse weight storage: ``storage.py``.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from exporter.common.atomic import atomic_write_bytes, check_writable
from exporter.errors import InputFileError
from exporter.tflite.convert import ConvertInfo, check_storage, convert, lower_model, store
from exporter.tflite.ir import Graph
from exporter.tflite.onnx_reader import load_onnx_file
from exporter.tflite.registry import load_all
from exporter.tflite.writer import describe_bytes

__all__ = [
    "ConversionResult",
    "convert_onnx_file",
    "convert_model",
    "supported_ops",
    "describe_tflite",
]


@dataclass(frozen=True)
class ConversionResult:
    path: Path
    bytes: int
    seconds: float
    op_counts: dict[str, int]
    transpose_count: int
    input_layout: str  # "nhwc" | "nchw"
    precision: str = "fp32"  # fp16 / dynamic as asked; int8 / int16x8 from a QDQ model
    io_dtype: str = "float32"  # dtype of the model's input/output tensors
    float_fallback_ops: list[str] = field(default_factory=list)  # int8: ops left in float
    storage: str = "dense"
    tensors: list[dict] | None = None  # storage="sparse": one row per weight (see storage.py)
    # convert_onnx_file(sparse_path=...): the sparse copy written from the same lowering.
    sparse: ConversionResult | None = None


Normalization = tuple[Sequence[float], Sequence[float]]


def convert_model(
    model: onnx.ModelProto,
    *,
    input_layout: str = "nhwc",
    io_dtype: str = "float32",
    normalization: Normalization | None = None,
    storage: str = "dense",
    delegate: str = "xnnpack",
    precision: str = "fp32",
) -> tuple[bytes, dict[str, Any]]:
    """Convert an in-memory ONNX model; returns the .tflite bytes and stats.

    A QDQ-quantized model (QuantizeLinear/DequantizeLinear) becomes a full-integer int8 model.
    ``io_dtype``: "float32" (QUANTIZE / DEQUANTIZE inside the model), "int8" (int8 input and
    output with the ONNX scales), or "uint8": raw NHWC camera pixels in, normalized inside the
    model with ``normalization=(mean, std)`` as ``(p / 255 - mean) / std``; the output is then
    int8 as with "int8".

    ``storage="sparse"`` stores each constant weight in the smallest encoding its consuming
    kernel accepts at invoke on the target's ``delegate`` ("xnnpack": LiteRT's default
    resolver, "none": builtin kernels only): dense, CSR behind a DENSIFY op, or a block format
    FULLY_CONNECTED reads directly (float32 1x4, int8 1x16). ``stats["tensors"]`` is then the
    per-weight table: name, shape, dtype, sparsity, encoding, via (direct / densify), index
    type, dense bytes, stored bytes, consumer. A sparse file is not always smaller than the
    dense one (each kept encoding is, but DENSIFY ops cost a little): compare before keeping.

    ``delegate`` also picks int8 encodings: for "xnnpack", int8 ops it has no kernel for
    (HARD_SWISH, GELU, a padded AVERAGE_POOL_2D) run in float between DEQUANTIZE and QUANTIZE
    (listed in ``float_fallback_ops``) and an unpadded average pool is a DEPTHWISE_CONV_2D.

    ``precision`` ("fp32", "fp16", "dynamic") is for a float model: float16 weight buffers
    widened by DEQUANTIZE, or int8 per-channel weights on LiteRT's hybrid kernels. A QDQ
    model's precision is its own: int8, or int16x8 when its activations are int16.
    """
    data, graph, info = convert(
        model,
        input_layout,
        io_dtype=io_dtype,
        normalization=normalization,
        storage=storage,
        delegate=delegate,
        precision=precision,
    )
    return data, _stats(graph, info, input_layout, storage)


def _stats(graph: Graph, info: ConvertInfo, input_layout: str, storage: str) -> dict[str, Any]:
    counts = graph.op_counts()
    stats = {
        "op_counts": counts,
        "transpose_count": counts.get("TRANSPOSE", 0),
        "input_layout": input_layout,
        "inputs": {n: list(graph.tensors[n].shape) for n in graph.inputs},
        "outputs": {n: list(graph.tensors[n].shape) for n in graph.outputs},
        "precision": info.precision,
        "io_dtype": info.io_dtype,
        "float_fallback_ops": list(info.float_fallback_ops),
        "storage": storage,
    }
    if info.tensors is not None:
        stats["tensors"] = [row.to_dict() for row in info.tensors]
    if info.normalization is not None:
        stats["normalization"] = info.normalization
    return stats


def convert_onnx_file(
    onnx_path: str | os.PathLike,
    tflite_path: str | os.PathLike,
    *,
    input_layout: str = "nhwc",
    io_dtype: str = "float32",
    normalization: Normalization | None = None,
    storage: str = "dense",
    delegate: str = "xnnpack",
    force: bool = True,
    sparse_path: str | os.PathLike | None = None,
    precision: str = "fp32",
) -> ConversionResult:
    """Convert ``onnx_path`` and write ``tflite_path`` atomically (nothing written on error).

    Keywords as in :func:`convert_model`; with ``storage="sparse"`` the result's ``tensors``
    is the per-weight storage table. ``sparse_path`` (with the default ``storage="dense"``)
    also writes the sparse-stored copy of the same lowering there, as ``storage="sparse"``
    would, without converting twice; it is the result's ``sparse``, whose ``seconds`` count
    only its storage decision and serialization.
    """
    start = time.perf_counter()
    if sparse_path is not None and storage != "dense":
        raise ValueError(
            "sparse_path is the sparse copy of a dense tflite_path; use storage='dense'"
        )
    check_storage(storage, delegate)
    targets = [Path(tflite_path)] + ([Path(sparse_path)] if sparse_path is not None else [])
    for target in targets:  # refused before any work, so neither file is written
        check_writable(target, force)
    model = load_onnx_file(onnx_path)
    graph, info = lower_model(
        model,
        input_layout,
        io_dtype=io_dtype,
        normalization=normalization,
        precision=precision,
        delegate=delegate,
    )
    data, stored, rows = store(graph, storage, delegate)
    stats = _stats(stored, dataclasses.replace(info, tensors=rows), input_layout, storage)
    result = _result(tflite_path, data, stats, time.perf_counter() - start)
    if sparse_path is not None:
        start = time.perf_counter()
        sparse_data, sparse_graph, rows = store(graph, "sparse", delegate)
        sparse_stats = _stats(
            sparse_graph, dataclasses.replace(info, tensors=rows), input_layout, "sparse"
        )
        sparse = _result(sparse_path, sparse_data, sparse_stats, time.perf_counter() - start)
        atomic_write_bytes(sparse_path, sparse_data, force=force)
        result = dataclasses.replace(result, sparse=sparse)
    atomic_write_bytes(tflite_path, data, force=force)
    return result


def _result(
    path: str | os.PathLike, data: bytes, stats: dict[str, Any], seconds: float
) -> ConversionResult:
    return ConversionResult(
        path=Path(path),
        bytes=len(data),
        seconds=seconds,
        op_counts=stats["op_counts"],
        transpose_count=stats["transpose_count"],
        input_layout=stats["input_layout"],
        precision=stats["precision"],
        io_dtype=stats["io_dtype"],
        float_fallback_ops=stats["float_fallback_ops"],
        storage=stats["storage"],
        tensors=stats.get("tensors"),
    )


def supported_ops() -> list[tuple[str, str]]:
    """(ONNX op type, TFLite ops emitted / notes), sorted by op type."""
    return sorted((op, conv.emits) for op, conv in load_all().items())


def describe_tflite(path: str | os.PathLike | bytes) -> dict[str, Any]:
    """Ops with counts, tensors (name, shape, dtype, buffer bytes, quantization), inputs/outputs, total bytes."""
    if isinstance(path, bytes):
        data, name = path, "TFLite bytes"
    else:
        if not Path(path).is_file():
            raise InputFileError(f"TFLite file {path} not found")
        data, name = Path(path).read_bytes(), str(path)
    try:
        return describe_bytes(data)
    except (
        ValueError,
        TypeError,
        IndexError,
        KeyError,
        AttributeError,
        UnicodeDecodeError,
        OverflowError,
        struct.error,
        RecursionError,
    ) as exc:
        # The schema's generated accessors do no bounds or type checks: corrupt bytes surface
        # as whatever the first bad read raises.
        raise InputFileError(f"{name}: not a valid TFLite model ({type(exc).__name__})") from None
