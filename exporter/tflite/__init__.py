"""ONNX -> TFLite (float32, NHWC) without TensorFlow.

The file format comes from the official TFLite flatbuffer schema (``schema.fbs``) via the
Python object API that LiteRT ships generated as ``ai_edge_litert.schema_py_generated``;
only ``writer.py`` touches it. Layout: ``layout.py``; op lowerings: ``ops/``
(registered in ``registry.py``); clean-up passes: ``passes.py``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from exporter.atomic import atomic_write_bytes
from exporter.tflite.convert import convert
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


def convert_model(
    model: onnx.ModelProto, *, input_layout: str = "nhwc"
) -> tuple[bytes, dict[str, Any]]:
    """Convert an in-memory ONNX model; returns the .tflite bytes and stats."""
    data, graph = convert(model, input_layout)
    counts = graph.op_counts()
    stats = {
        "op_counts": counts,
        "transpose_count": counts.get("TRANSPOSE", 0),
        "input_layout": input_layout,
        "inputs": {n: list(graph.tensors[n].shape) for n in graph.inputs},
        "outputs": {n: list(graph.tensors[n].shape) for n in graph.outputs},
    }
    return data, stats


def convert_onnx_file(
    onnx_path: str | os.PathLike,
    tflite_path: str | os.PathLike,
    *,
    input_layout: str = "nhwc",
    force: bool = True,
) -> ConversionResult:
    """Convert ``onnx_path`` and write ``tflite_path`` atomically (nothing written on error)."""
    start = time.perf_counter()
    model = load_onnx_file(onnx_path)
    data, stats = convert_model(model, input_layout=input_layout)
    path = atomic_write_bytes(tflite_path, data, force=force)
    return ConversionResult(
        path=path,
        bytes=len(data),
        seconds=time.perf_counter() - start,
        op_counts=stats["op_counts"],
        transpose_count=stats["transpose_count"],
        input_layout=input_layout,
    )


def supported_ops() -> list[tuple[str, str]]:
    """(ONNX op type, TFLite ops emitted / notes), sorted by op type."""
    return sorted((op, conv.emits) for op, conv in load_all().items())


def describe_tflite(path: str | os.PathLike | bytes) -> dict[str, Any]:
    """Ops with counts, tensors (name, shape, dtype, buffer bytes, quantization), inputs/outputs, total bytes."""
    data = path if isinstance(path, bytes) else Path(path).read_bytes()
    return describe_bytes(data)
