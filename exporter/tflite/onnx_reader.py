"""Load an ONNX model and make every shape static for TFLite.

TFLite tensors have fixed shapes, so a symbolic batch dim is pinned to 1 before shape
inference; any other unknown dim is an error the user can act on (re-export with a fixed
image size). Sub-graphs that only compute constants (``Constant``, ``Shape`` of a static
tensor and whatever is fed purely by them) are evaluated here so the converters see numpy
arrays instead of ops.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from exporter.errors import ConversionError, InputFileError

# Ops that must never be evaluated at conversion time even with constant inputs.
_NEVER_FOLD = frozenset(
    {
        "RandomNormal",
        "RandomUniform",
        "RandomNormalLike",
        "RandomUniformLike",
        "Multinomial",
        "Bernoulli",
    }
)


def load_onnx_file(path: str | os.PathLike) -> onnx.ModelProto:
    """Parse ``path``; any missing, truncated or corrupt file becomes a one-line InputFileError."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"ONNX model not found: {path}")
    try:
        model = onnx.load(str(path))
        # A protobuf cut at a field boundary still parses; the checker catches the missing parts.
        onnx.checker.check_model(model)
    except (DecodeError, onnx.checker.ValidationError, ValueError, OSError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputFileError(f"cannot read ONNX model {path}: {first_line}") from None
    if not model.graph.node:
        raise InputFileError(f"cannot read ONNX model {path}: the graph has no nodes")
    return model


def attrs(node: onnx.NodeProto) -> dict[str, Any]:
    """Node attributes as Python values (strings decoded)."""
    out: dict[str, Any] = {}
    for a in node.attribute:
        value = onnx.helper.get_attribute_value(a)
        out[a.name] = value.decode() if isinstance(value, bytes) else value
    return out


def node_label(node: onnx.NodeProto) -> str:
    return node.name or (node.output[0] if node.output else node.op_type)


@dataclass
class OnnxGraph:
    """The static-shaped view the converters read from."""

    model: onnx.ModelProto
    nodes: list[onnx.NodeProto]
    constants: dict[str, np.ndarray]
    shapes: dict[str, tuple[int, ...]]
    elem_types: dict[str, int]
    inputs: list[str]
    outputs: list[str]
    folded: list[str] = field(default_factory=list)  # op types evaluated at load time


def _pin_input_dims(model: onnx.ModelProto, initializer_names: set[str]) -> None:
    for vi in model.graph.input:
        if vi.name in initializer_names:
            continue
        dims = vi.type.tensor_type.shape.dim
        for i, dim in enumerate(dims):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                continue
            label = dim.dim_param or "?"
            if i == 0:
                dim.Clear()
                dim.dim_value = 1  # TFLite shapes are static; the batch is pinned to 1
                continue
            raise ConversionError(
                f"input '{vi.name}' has a dynamic dim {i} ('{label}'); only the batch dim (0) "
                "may be dynamic - export the model with a fixed input size"
            )


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as exc:
        raise ConversionError(f"ONNX shape inference failed: {str(exc).splitlines()[0]}") from None


def _collect_types(model: onnx.ModelProto) -> tuple[dict[str, tuple[int, ...]], dict[str, int]]:
    shapes: dict[str, tuple[int, ...]] = {}
    types: dict[str, int] = {}
    g = model.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        tt = vi.type.tensor_type
        types[vi.name] = tt.elem_type
        if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            shapes[vi.name] = tuple(int(d.dim_value) for d in tt.shape.dim)
    return shapes, types


def _const_attr_value(node: onnx.NodeProto) -> np.ndarray:
    a = node.attribute[0]
    if a.name == "value":
        return numpy_helper.to_array(a.t)
    value = onnx.helper.get_attribute_value(a)
    dtype = np.float32 if a.name.startswith("value_float") else np.int64
    return np.asarray(value, dtype=dtype)


def _fold(
    model: onnx.ModelProto, constants: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]
) -> tuple[list[onnx.NodeProto], list[str]]:
    """Evaluate constant-only nodes in graph order; return the nodes left and the folded op types."""
    kept: list[onnx.NodeProto] = []
    folded: list[str] = []
    evaluator_cls = None
    for node in model.graph.node:
        ins = [i for i in node.input if i]
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            constants[node.output[0]] = _const_attr_value(node)
            folded.append(node.op_type)
            continue
        if node.op_type == "Shape" and ins and ins[0] in shapes and len(node.attribute) == 0:
            constants[node.output[0]] = np.asarray(shapes[ins[0]], dtype=np.int64)
            folded.append(node.op_type)
            continue
        foldable = (
            ins
            and all(i in constants for i in ins)
            and node.domain in ("", "ai.onnx")
            and node.op_type not in _NEVER_FOLD
        )
        if not foldable:
            kept.append(node)
            continue
        if evaluator_cls is None:
            from onnx.reference import ReferenceEvaluator  # slow import, only when needed

            evaluator_cls = ReferenceEvaluator
        try:
            values = _run_single(evaluator_cls, model, node, constants)
        except Exception:  # an op the reference evaluator cannot run stays for pre-flight
            kept.append(node)
            continue
        constants.update(values)
        folded.append(node.op_type)
    return kept, folded


def _run_single(
    evaluator_cls: Any,
    model: onnx.ModelProto,
    node: onnx.NodeProto,
    constants: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
    inits = [numpy_helper.from_array(constants[i], i) for i in node.input if i]
    outs = [onnx.helper.make_empty_tensor_value_info(o) for o in node.output if o]
    graph = onnx.helper.make_graph([node], "fold", [], outs, initializer=inits)
    single = onnx.helper.make_model(graph, opset_imports=model.opset_import)
    results = evaluator_cls(single).run(None, {})
    return {o: np.asarray(r) for o, r in zip([o for o in node.output if o], results, strict=True)}


def read_graph(model: onnx.ModelProto) -> OnnxGraph:
    """Pin the batch dim, infer shapes, fold constant sub-graphs."""
    model_copy = onnx.ModelProto()
    model_copy.CopyFrom(model)
    init_names = {t.name for t in model_copy.graph.initializer}
    _pin_input_dims(model_copy, init_names)
    inferred = _infer(model_copy)
    shapes, types = _collect_types(inferred)
    constants = {t.name: numpy_helper.to_array(t) for t in inferred.graph.initializer}
    for name, value in constants.items():
        shapes[name] = tuple(value.shape)
    nodes, folded = _fold(inferred, constants, shapes)
    if any(op != "Constant" for op in folded):
        # Folded values (e.g. a computed Reshape target) may sharpen downstream shapes.
        graph = onnx.helper.make_graph(
            nodes,
            inferred.graph.name,
            list(inferred.graph.input),
            list(inferred.graph.output),
            initializer=[numpy_helper.from_array(v, k) for k, v in constants.items()],
        )
        rebuilt = onnx.helper.make_model(graph, opset_imports=inferred.opset_import)
        rebuilt.ir_version = inferred.ir_version
        inferred = _infer(rebuilt)
        shapes, types = _collect_types(inferred)
        for name, value in constants.items():
            shapes[name] = tuple(value.shape)
    inputs = [vi.name for vi in model_copy.graph.input if vi.name not in init_names]
    for name in inputs:
        if types.get(name) != onnx.TensorProto.FLOAT:
            raise ConversionError(
                f"input '{name}' is not float32; only float32 inputs are supported"
            )
    outputs = [vi.name for vi in model_copy.graph.output]
    return OnnxGraph(inferred, nodes, constants, shapes, types, inputs, outputs, folded)
