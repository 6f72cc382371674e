"""QDQ folding on the ONNX side: QuantizeLinear -> DequantizeLinear pairs become tensor parameters.

A QDQ model (onnxruntime ``quantize_static``, QuantFormat.QDQ) is a float graph whose values are
rounded through Q -> DQ pairs. After ``read_graph`` has already evaluated the constant-only
DequantizeLinear of every weight and bias (they arrive as exactly-representable float
constants), this pass removes each activation pair, rewires its readers to the float value and
records the pair's scale / zero point for that value. The float converters then lower the
graph unchanged and ``int8.quantize_graph`` turns the annotated TFLite graph into integers.

A Conv / ConvTranspose / Gemm / MatMul whose weight did not come through a DequantizeLinear was
left in float on purpose (``nodes_to_exclude``) and is reported in ``float_nodes``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from exporter.errors import ConversionError
from exporter.tflite import quant
from exporter.tflite.onnx_reader import OnnxGraph, attrs, node_label

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
_WEIGHTED = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}


@dataclass
class QdqInfo:
    params: dict[str, quant.QParams] = field(
        default_factory=dict
    )  # float ONNX value -> int8 params
    float_nodes: set[str] = field(default_factory=set)  # labels of nodes meant to stay float


def has_qdq(model: onnx.ModelProto) -> bool:
    return any(n.op_type in QDQ_OPS and n.domain in ("", "ai.onnx") for n in model.graph.node)


def activation_dtype(model: onnx.ModelProto) -> str:
    """ "int16" when the model's activation QuantizeLinear nodes are 16-bit (onnxruntime's
    QInt16 activations: the TFLite 16x8 scheme), else "int8"."""
    inits = {t.name: t for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type != "QuantizeLinear" or n.input[0] in inits or len(n.input) < 3:
            continue
        zp = inits.get(n.input[2])
        if zp is not None and zp.data_type == onnx.TensorProto.INT16:
            return "int16"
    return "int8"


def quantized_weight_names(model: onnx.ModelProto) -> set[str]:
    """Outputs of the DequantizeLinear nodes that read an initializer (weights and biases)."""
    inits = {t.name for t in model.graph.initializer}
    return {
        n.output[0]
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in inits
    }


def _pair_params(q: onnx.NodeProto, g: OnnxGraph) -> quant.QParams:
    scale = g.constants.get(q.input[1])
    zp = g.constants.get(q.input[2]) if len(q.input) > 2 and q.input[2] else None
    if scale is None or (len(q.input) > 2 and q.input[2] and zp is None):
        raise ConversionError(
            "QuantizeLinear scale and zero point must be constants", node_label(q), q.op_type
        )
    if scale.size != 1:
        raise ConversionError(
            "per-channel activation quantization is not supported", node_label(q), q.op_type
        )
    params = quant.from_onnx(scale, zp, int(attrs(q).get("axis", 1)))
    return quant.as_int8(params, quant.onnx_zero_point_dtype(zp))


def _fold_constant_dq(g: OnnxGraph) -> None:
    """Evaluate DequantizeLinear of constants (weights, biases): onnx's reference evaluator
    has no opset-18 DequantizeLinear, so ``read_graph`` may have left them."""
    kept = []
    for n in g.nodes:
        value = g.constants.get(n.input[0]) if n.op_type == "DequantizeLinear" else None
        if value is None or not all(i in g.constants for i in n.input[1:] if i):
            kept.append(n)
            continue
        zp = g.constants[n.input[2]] if len(n.input) > 2 and n.input[2] else None
        axis = int(attrs(n).get("axis", 1)) % max(value.ndim, 1)
        params = quant.from_onnx(g.constants[n.input[1]], zp, axis)
        g.constants[n.output[0]] = quant.dequantize_array(value, params)
        g.shapes[n.output[0]] = tuple(value.shape)
    g.nodes = kept


def fold_qdq(g: OnnxGraph, quantized_weights: set[str]) -> QdqInfo:
    """Remove activation Q -> DQ pairs from ``g`` in place; return the recorded parameters."""
    info = QdqInfo()
    _fold_constant_dq(g)
    producers = {o: n for n in g.nodes for o in n.output}
    alias: dict[str, str] = {}  # DQ output -> the float value it re-reads
    dropped: set[int] = set()
    for dq in g.nodes:
        if dq.op_type != "DequantizeLinear":
            continue
        q = producers.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            continue  # a lone DequantizeLinear stays and pre-flight reports it
        value = q.input[0]
        params = _pair_params(q, g)
        if value in info.params and not params.same_as(info.params[value]):
            raise ConversionError(
                f"value '{value}' is quantized twice with different parameters",
                node_label(q),
                q.op_type,
            )
        info.params[value] = params
        alias[dq.output[0]] = value
        dropped.add(id(dq))
    readers_of_q = {i for n in g.nodes if id(n) not in dropped for i in n.input}
    for n in g.nodes:
        if n.op_type == "QuantizeLinear" and n.output[0] not in readers_of_q:
            dropped.add(id(n))
    kept = [n for n in g.nodes if id(n) not in dropped]
    for n in kept:
        for i, name in enumerate(n.input):
            if name in alias:
                n.input[i] = alias[name]
    _keep_output_names(g, kept, alias, info)
    g.nodes = kept
    for n in kept:
        w = _WEIGHTED.get(n.op_type)
        if w is not None and len(n.input) > w and n.input[w] not in quantized_weights:
            info.float_nodes.add(node_label(n))
    return info


def _keep_output_names(
    g: OnnxGraph, nodes: list[onnx.NodeProto], alias: dict[str, str], info: QdqInfo
) -> None:
    """A graph output written by a DQ keeps its name: the producer of the float value writes it."""
    for out in g.outputs:
        value = alias.get(out)
        if value is None:
            continue
        if value in g.inputs:
            raise ConversionError(f"graph output '{out}' only re-quantizes input '{value}'")
        for n in nodes:
            n.output[:] = [out if o == value else o for o in n.output]
            n.input[:] = [out if i == value else i for i in n.input]
        info.params[out] = info.params.pop(value)
        g.shapes[out] = g.shapes[value]
        g.elem_types[out] = onnx.TensorProto.FLOAT
