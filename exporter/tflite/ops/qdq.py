"""QuantizeLinear / DequantizeLinear: folded before lowering, never converted one by one.

``exporter.tflite.fold_qdq.fold_qdq`` turns every activation Q -> DQ pair into int8 parameters on
the value, and ``read_graph`` evaluates the DequantizeLinear of each constant weight. Only a
node outside those patterns reaches pre-flight, which reports it through the checks below.
"""

from __future__ import annotations

import onnx

from exporter.tflite.context import ConversionContext
from exporter.tflite.registry import converter


def _unpaired(node: onnx.NodeProto, ctx: ConversionContext) -> str | None:
    other = "DequantizeLinear" if node.op_type == "QuantizeLinear" else "QuantizeLinear"
    return f"only {node.op_type} paired with a {other} (QDQ format) is supported"


def _never(node: onnx.NodeProto, ctx: ConversionContext) -> None:
    raise ctx.error(_unpaired(node, ctx) or "")


converter(
    "QuantizeLinear",
    emits="folded: a Q -> DQ pair on an activation makes it an int8 tensor with that scale / zero point (full-integer model)",
    check=_unpaired,
)(_never)
converter(
    "DequantizeLinear",
    emits="folded: on a constant weight (per-channel int8 / int32 bias) or as the DQ of a Q -> DQ pair",
    check=_unpaired,
)(_never)
