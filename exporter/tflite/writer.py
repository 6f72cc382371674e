"""IR <-> .tflite bytes: the only module that writes a TFLite model (flatbuffers, TFLite schema).

Uses the object API generated from the official TFLite ``schema.fbs``
(``ai_edge_litert.schema_py_generated``), so the file layout follows the schema exactly.
"""

from __future__ import annotations

from typing import Any

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

from exporter.errors import ConversionError
from exporter.tflite.ir import PSEUDO_OPS, Graph
from exporter.tflite.op_versions import op_version
from exporter.tflite.sparsity import DimMeta, SparseEncoding

_FILE_IDENTIFIER = b"TFL3"
_SCHEMA_VERSION = 3
_BUFFER_ALIGNMENT = 16  # what the TFLite converter uses; lets kernels read weights in place

_TENSOR_TYPES = {
    "float32": schema.TensorType.FLOAT32,
    "float16": schema.TensorType.FLOAT16,
    "int32": schema.TensorType.INT32,
    "int16": schema.TensorType.INT16,
    "int8": schema.TensorType.INT8,
    "uint8": schema.TensorType.UINT8,
    "int64": schema.TensorType.INT64,
    "bool": schema.TensorType.BOOL,
}
_TYPE_NAMES = {v: k for k, v in _TENSOR_TYPES.items()}
_OP_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}

# Builtin op -> name of its options table (BuiltinOptions member and "<name>T" class).
_OPTIONS = {
    "CONV_2D": "Conv2DOptions",
    "DEPTHWISE_CONV_2D": "DepthwiseConv2DOptions",
    "TRANSPOSE_CONV": "TransposeConvOptions",
    "FULLY_CONNECTED": "FullyConnectedOptions",
    "BATCH_MATMUL": "BatchMatMulOptions",
    "ADD": "AddOptions",
    "SUB": "SubOptions",
    "MUL": "MulOptions",
    "DIV": "DivOptions",
    "POW": "PowOptions",
    "MAXIMUM": "MaximumMinimumOptions",
    "MINIMUM": "MaximumMinimumOptions",
    "CONCATENATION": "ConcatenationOptions",
    "RESHAPE": "ReshapeOptions",
    "TRANSPOSE": "TransposeOptions",
    "SLICE": "SliceOptions",
    "STRIDED_SLICE": "StridedSliceOptions",
    "SPLIT": "SplitOptions",
    "GATHER": "GatherOptions",
    "PAD": "PadOptions",
    "PADV2": "PadV2Options",
    "MAX_POOL_2D": "Pool2DOptions",
    "AVERAGE_POOL_2D": "Pool2DOptions",
    "MEAN": "ReducerOptions",
    "SUM": "ReducerOptions",
    "REDUCE_MAX": "ReducerOptions",
    "REDUCE_MIN": "ReducerOptions",
    "REDUCE_PROD": "ReducerOptions",
    "SOFTMAX": "SoftmaxOptions",
    "LEAKY_RELU": "LeakyReluOptions",
    "HARD_SWISH": "HardSwishOptions",
    "GELU": "GeluOptions",
    "RESIZE_BILINEAR": "ResizeBilinearOptions",
    "RESIZE_NEAREST_NEIGHBOR": "ResizeNearestNeighborOptions",
}
_ENUM_FIELDS = {
    "padding": schema.Padding,
    "fused_activation_function": schema.ActivationFunctionType,
}


class _AlignedBufferT(schema.BufferT):
    def Pack(self, builder: flatbuffers.Builder) -> int:  # noqa: N802 - schema API name
        # Pre-align so the vector CreateNumpyVector writes next starts on a 16-byte boundary.
        builder.Prep(_BUFFER_ALIGNMENT, int(self.data.size))
        return super().Pack(builder)


class _SharedQuantizationT(schema.QuantizationParametersT):
    """Quantization table whose scale and zero-point vectors are shared between tensors.

    Flatbuffer tables refer to vectors by offset, so identical vectors can be written once.
    Every per-channel weight and its bias carry an all-zero int64 zero-point vector (8 bytes
    a channel, twice); sharing them is what keeps an int8 MobileNetV2 near a quarter of the
    float file. LiteRT reads the shared vectors like any other.
    """

    def __init__(self, cache: dict[tuple[str, tuple], int]) -> None:
        super().__init__()
        self._cache = cache

    def _vector(self, builder: flatbuffers.Builder, kind: str, values: list) -> int:
        key = (kind, tuple(values))
        if key not in self._cache:
            dtype = np.float32 if kind == "scale" else np.int64
            self._cache[key] = builder.CreateNumpyVector(np.asarray(values, dtype))
        return self._cache[key]

    def Pack(self, builder: flatbuffers.Builder) -> int:  # noqa: N802 - schema API name
        scale = self._vector(builder, "scale", self.scale)
        zero_point = self._vector(builder, "zero_point", self.zeroPoint)
        schema.QuantizationParametersStart(builder)
        schema.QuantizationParametersAddScale(builder, scale)
        schema.QuantizationParametersAddZeroPoint(builder, zero_point)
        schema.QuantizationParametersAddQuantizedDimension(builder, self.quantizedDimension)
        return schema.QuantizationParametersEnd(builder)


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _options(op: str, values: dict[str, Any]) -> tuple[int, Any]:
    table = _OPTIONS.get(op)
    if table is None:
        if values:
            raise ConversionError(f"writer has no options table for {op} (got {sorted(values)})")
        return schema.BuiltinOptions.NONE, None
    obj = getattr(schema, f"{table}T")()
    for key, value in values.items():
        attr = _camel(key)
        if not hasattr(obj, attr):
            raise ConversionError(f"{table} has no field '{key}'")
        if key in _ENUM_FIELDS:
            value = getattr(_ENUM_FIELDS[key], value)
        setattr(obj, attr, value)
    return getattr(schema.BuiltinOptions, table), obj


def serialize(graph: Graph, description: str = "edgepack") -> bytes:
    """Pack the IR into a TFLite flatbuffer (schema v3, identifier TFL3)."""
    buffers = [schema.BufferT()]  # buffer 0: the empty sentinel for non-constant tensors
    shared_vectors: dict[tuple[str, tuple], int] = {}
    index: dict[str, int] = {}
    tensors = []
    for name, t in graph.tensors.items():
        tt = schema.TensorT()
        tt.name = name
        tt.shape = np.asarray(t.shape, np.int32)
        tt.type = _TENSOR_TYPES[t.dtype]
        tt.buffer = 0
        if t.data is not None:
            payload = t.data if t.sparsity is None else t.sparsity.values
            buf = _AlignedBufferT()
            buf.data = np.frombuffer(
                np.ascontiguousarray(payload, dtype=t.dtype).tobytes(), np.uint8
            )
            buffers.append(buf)
            tt.buffer = len(buffers) - 1
        if t.scales is not None:
            q = _SharedQuantizationT(shared_vectors)
            q.scale = list(t.scales)
            q.zeroPoint = list(t.zero_points or [0] * len(t.scales))
            q.quantizedDimension = t.quantized_dimension
            tt.quantization = q
        if t.sparsity is not None:
            tt.sparsity = _sparsity(t.sparsity)
        index[name] = len(tensors)
        tensors.append(tt)

    codes: dict[tuple[str, int], int] = {}
    operator_codes = []
    operators = []
    for op in graph.operators:
        if op.op in PSEUDO_OPS or not hasattr(schema.BuiltinOperator, op.op):
            raise ConversionError(f"internal: op {op.op} reached the writer")
        key = (op.op, op_version(op, graph))
        if key not in codes:
            code = getattr(schema.BuiltinOperator, op.op)
            oc = schema.OperatorCodeT()
            oc.builtinCode = code
            oc.deprecatedBuiltinCode = min(code, 127)  # codes > 127 live only in builtinCode
            oc.version = key[1]
            codes[key] = len(operator_codes)
            operator_codes.append(oc)
        ot = schema.OperatorT()
        ot.opcodeIndex = codes[key]
        ot.inputs = [index[i] if i is not None else -1 for i in op.inputs]
        ot.outputs = [index[o] for o in op.outputs]
        ot.builtinOptionsType, ot.builtinOptions = _options(op.op, op.options)
        operators.append(ot)

    sub = schema.SubGraphT()
    sub.name = graph.name
    sub.tensors = tensors
    sub.operators = operators
    sub.inputs = [index[n] for n in graph.inputs]
    sub.outputs = [index[n] for n in graph.outputs]

    sig = schema.SignatureDefT()
    sig.signatureKey = "serving_default"
    sig.subgraphIndex = 0
    sig.inputs = [_tensor_map(n, index[n]) for n in graph.inputs]
    sig.outputs = [_tensor_map(n, index[n]) for n in graph.outputs]

    model = schema.ModelT()
    model.version = _SCHEMA_VERSION
    model.description = description
    model.operatorCodes = operator_codes
    model.subgraphs = [sub]
    model.buffers = buffers
    model.signatureDefs = [sig]

    builder = flatbuffers.Builder(1024 + sum(b.data.size + _BUFFER_ALIGNMENT for b in buffers[1:]))
    builder.Finish(model.Pack(builder), file_identifier=_FILE_IDENTIFIER)
    return bytes(builder.Output())


def append_metadata(model: bytes, entries: dict[str, bytes]) -> bytes:
    """``model`` with each ``entries`` item as a new buffer named in the model's ``metadata``.

    Nothing of the model is re-packed: its bytes after the 8-byte header are carried over
    unchanged, and a new root table, ``buffers`` and ``metadata`` vector (plus fresh copies of
    the small root vectors) are written in front of them. Flatbuffer references are relative
    and point forward, so every table and vector of the model stays valid where it is,
    including the quantization vectors :class:`_SharedQuantizationT` shares between tensors,
    and the weights keep their 16-byte alignment. The cost over the entries is the new root
    (about 4 bytes per buffer and operator code, plus ~100) and the old root's now unused
    vectors of the same size.
    """
    if len(model) < 8 or model[4:8] != _FILE_IDENTIFIER:
        raise ValueError("not a TFLite flatbuffer (missing TFL3 identifier)")
    root = schema.Model.GetRootAs(model, 0)
    names = {_str(root.Metadata(i).Name()) for i in range(root.MetadataLength())}
    if clash := sorted(names & set(entries)):
        raise ValueError(f"the model already has metadata {', '.join(clash)}")
    external = any(root.Buffers(i).Offset() > 1 for i in range(root.BuffersLength()))
    if external or root.ExternalBuffersLength() or root.ExternalBufferGroupsLength():
        # Their data is addressed from the start of the file, which moves here.
        raise ValueError("TFLite models with external buffers cannot take metadata")

    b = flatbuffers.Builder(len(model) + sum(len(d) + 64 for d in entries.values()) + 1024)
    b.Prep(_BUFFER_ALIGNMENT, 0)  # minalign: the file length stays a multiple of 16
    # Trailing zeros so that every old object keeps its position modulo 16 in the new file.
    b.Pad(-len(model) % _BUFFER_ALIGNMENT)
    tail = model[8:]
    b.Prep(1, len(tail))  # room only; the Builder has no public "place raw bytes" call
    b.head = b.Head() - len(tail)
    b.Bytes[b.Head() : b.Head() + len(tail)] = tail
    base = b.Offset()

    def old(table: Any) -> int:  # builder offset of a table of ``model``
        return base - (table._tab.Pos - 8)

    def refs(start: Any, offsets: list[int]) -> int:
        start(b, len(offsets))
        for off in reversed(offsets):
            b.PrependUOffsetTRelative(off)
        return b.EndVector()

    buffers = [old(root.Buffers(i)) for i in range(root.BuffersLength())]
    metadata = [old(root.Metadata(i)) for i in range(root.MetadataLength())]
    for name, data in entries.items():
        buf = _AlignedBufferT()
        buf.data = np.frombuffer(data, np.uint8)
        buffers.append(buf.Pack(b))
        md = schema.MetadataT()
        md.name, md.buffer = name, len(buffers) - 1
        metadata.append(md.Pack(b))
    vectors = {
        schema.ModelAddOperatorCodes: refs(
            schema.ModelStartOperatorCodesVector,
            [old(root.OperatorCodes(i)) for i in range(root.OperatorCodesLength())],
        ),
        schema.ModelAddSubgraphs: refs(
            schema.ModelStartSubgraphsVector,
            [old(root.Subgraphs(i)) for i in range(root.SubgraphsLength())],
        ),
        schema.ModelAddBuffers: refs(schema.ModelStartBuffersVector, buffers),
        schema.ModelAddMetadata: refs(schema.ModelStartMetadataVector, metadata),
        schema.ModelAddSignatureDefs: refs(
            schema.ModelStartSignatureDefsVector,
            [old(root.SignatureDefs(i)) for i in range(root.SignatureDefsLength())],
        ),
    }
    if root.Description() is not None:
        vectors[schema.ModelAddDescription] = b.CreateString(root.Description())
    if not root.MetadataBufferIsNone():
        vectors[schema.ModelAddMetadataBuffer] = b.CreateNumpyVector(root.MetadataBufferAsNumpy())
    schema.ModelStart(b)
    schema.ModelAddVersion(b, root.Version())
    for add, off in vectors.items():
        add(b, off)
    b.Finish(schema.ModelEnd(b), file_identifier=_FILE_IDENTIFIER)
    return bytes(b.Output())


def _str(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


_INDEX_VECTORS = {
    "int32": (schema.SparseIndexVector.Int32Vector, schema.Int32VectorT),
    "uint16": (schema.SparseIndexVector.Uint16Vector, schema.Uint16VectorT),
    "uint8": (schema.SparseIndexVector.Uint8Vector, schema.Uint8VectorT),
}


def _index_vector(arr: np.ndarray) -> tuple[int, Any]:
    kind, cls = _INDEX_VECTORS[arr.dtype.name]
    vec = cls()
    vec.values = np.ascontiguousarray(arr)
    return kind, vec


def _sparsity(enc: SparseEncoding) -> Any:
    sp = schema.SparsityParametersT()
    sp.traversalOrder = list(enc.traversal_order)
    sp.blockMap = list(enc.block_map) or None
    sp.dimMetadata = []
    for d in enc.dims:
        dm = schema.DimensionMetadataT()
        if d.is_sparse:
            dm.format = schema.DimensionType.SPARSE_CSR
            dm.arraySegmentsType, dm.arraySegments = _index_vector(d.segments)
            dm.arrayIndicesType, dm.arrayIndices = _index_vector(d.indices)
        else:
            dm.format = schema.DimensionType.DENSE
            dm.denseSize = int(d.dense_size)
        sp.dimMetadata.append(dm)
    return sp


def _read_sparsity(sp: Any, shape: list[int], values: np.ndarray) -> SparseEncoding:
    """The schema object back as a SparseEncoding (for describe)."""
    dims = []
    for dm in sp.dimMetadata or []:
        if dm.format == schema.DimensionType.SPARSE_CSR:
            dims.append(
                DimMeta(
                    segments=np.asarray(dm.arraySegments.values),
                    indices=np.asarray(dm.arrayIndices.values),
                )
            )
        else:
            dims.append(DimMeta(dense_size=int(dm.denseSize)))
    block_map = tuple(int(b) for b in (sp.blockMap if sp.blockMap is not None else []))
    fmt = f"block1x{dims[-1].dense_size}" if block_map else "csr"
    order = tuple(int(o) for o in sp.traversalOrder)
    return SparseEncoding(fmt, tuple(shape), order, block_map, tuple(dims), values)


def _tensor_map(name: str, idx: int) -> Any:
    tm = schema.TensorMapT()
    tm.name = name
    tm.tensorIndex = idx
    return tm


def describe_bytes(data: bytes) -> dict[str, Any]:
    """Ops, tensors, inputs and outputs of a .tflite flatbuffer (first subgraph)."""
    if len(data) < 8 or data[4:8] != _FILE_IDENTIFIER:
        raise ValueError("not a TFLite flatbuffer (missing TFL3 identifier)")
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(data, 0))
    sub = model.subgraphs[0]
    names = []
    versions: dict[str, list[int]] = {}
    for oc in model.operatorCodes:
        code = max(int(oc.builtinCode), int(oc.deprecatedBuiltinCode))
        names.append(_OP_NAMES.get(code, f"BUILTIN_{code}"))
        versions.setdefault(names[-1], []).append(int(oc.version))
    ops: dict[str, int] = {}
    for op in sub.operators or []:
        ops[names[op.opcodeIndex]] = ops.get(names[op.opcodeIndex], 0) + 1
    tensors = []
    for t in sub.tensors or []:
        buf = model.buffers[t.buffer] if t.buffer < len(model.buffers) else None
        nbytes = 0 if buf is None or buf.data is None else len(buf.data)
        entry: dict[str, Any] = {
            "name": t.name.decode() if isinstance(t.name, bytes) else t.name,
            "shape": [int(d) for d in (t.shape if t.shape is not None else [])],
            "dtype": _TYPE_NAMES.get(t.type, f"type{t.type}"),
            "buffer_bytes": nbytes,
        }
        if nbytes and entry["dtype"] in _TYPE_NAMES.values():
            entry.update(_storage_fields(t, entry, np.asarray(buf.data, np.uint8)))
        q = t.quantization
        if q is not None and q.scale is not None and len(q.scale):
            entry["quantization"] = {
                "scales": [float(s) for s in q.scale],
                "zero_points": [int(z) for z in q.zeroPoint] if q.zeroPoint is not None else [],
                "quantized_dimension": int(q.quantizedDimension),
            }
        tensors.append(entry)
    weights = [t for t in tensors if "sparsity" in t and len(t["shape"]) >= 2]
    params = sum(int(np.prod(t["shape"])) for t in weights)
    zeros = sum(round(t["sparsity"] * int(np.prod(t["shape"]))) for t in weights)
    return {
        "format": "tflite",
        "bytes": len(data),
        "params": params,
        "zeros": zeros,
        "sparsity": zeros / max(1, params),
        "ops": dict(sorted(ops.items())),
        "op_versions": {op: sorted(v) for op, v in sorted(versions.items())},
        "tensors": tensors,
        "inputs": [tensors[i]["name"] for i in sub.inputs],
        "outputs": [tensors[i]["name"] for i in sub.outputs],
        "input_details": [_io_detail(tensors[i]) for i in sub.inputs],
        "output_details": [_io_detail(tensors[i]) for i in sub.outputs],
        "total_bytes": len(data),
    }


def _storage_fields(t: Any, entry: dict[str, Any], raw: np.ndarray) -> dict[str, Any]:
    """Bytes, encoding and sparsity (fraction of zeros of the dense tensor) of a constant."""
    values = (
        raw.view(np.dtype(entry["dtype"]))
        if raw.size % np.dtype(entry["dtype"]).itemsize == 0
        else None
    )
    if values is None:
        return {"bytes": int(raw.size)}
    size = int(np.prod(entry["shape"])) if entry["shape"] else 1
    if t.sparsity is None:
        sparsity = float(np.mean(values == 0)) if values.size else 0.0
        return {"bytes": int(raw.size), "encoding": "dense", "sparsity": sparsity}
    enc = _read_sparsity(t.sparsity, entry["shape"], values)
    stored_zeros = int(np.sum(values == 0))  # explicit zeros inside stored blocks
    return {
        "bytes": int(raw.size),
        "encoding": enc.format,
        "index_type": enc.index_type,
        "sparsity": (size - values.size + stored_zeros) / max(1, size),
    }


def _io_detail(tensor: dict[str, Any]) -> dict[str, Any]:
    """Name, shape, dtype and (per-tensor) scale / zero point: what a caller must feed / read."""
    q = tensor.get("quantization")
    return {
        "name": tensor["name"],
        "shape": tensor["shape"],
        "dtype": tensor["dtype"],
        "scale": q["scales"][0] if q else None,
        "zero_point": q["zero_points"][0] if q and q["zero_points"] else None,
    }
