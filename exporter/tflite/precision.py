"""Weight-only precisions of a float graph: float16 weights and dynamic-range int8 (hybrid).

Both run on the final float IR graph (after the passes), so they see the weights in their
TFLite layout and leave the activations float32:

* ``float16``: every float32 constant is stored as float16 and widened back by a DEQUANTIZE
  at the start of the graph, as the TFLite converter's float16 quantization writes it. LiteRT's
  CPU kernels run the widened float32 weights; XNNPACK and the GPU delegate read the float16
  buffer directly.
* ``dynamic``: CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED weights become symmetric
  per-channel int8 (zero point 0, scale max|w|/127 per output channel); the op keeps float32
  input, bias and output, which selects LiteRT's builtin hybrid kernels: they quantize the
  input on the fly, run the integer product and rescale to float.
"""

from __future__ import annotations

import numpy as np

from exporter.tflite import quant
from exporter.tflite.ir import Graph, Operator

#: Ops with a hybrid (float activations, int8 weights) kernel in LiteRT's builtin resolver.
HYBRID_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def to_float16(graph: Graph) -> Graph:
    """Store each float32 constant as float16 behind one DEQUANTIZE (in place; returns graph)."""
    widened: dict[str, str] = {}
    dequantize: list[Operator] = []
    for op in graph.operators:
        for i, name in enumerate(op.inputs):
            t = graph.tensors[name] if name is not None else None
            if t is None or not t.is_const or t.dtype != "float32" or t.sparsity is not None:
                continue
            if name not in widened:
                half = graph.add_const(f"{name}_fp16", t.data.astype(np.float16), "float16")
                full = graph.add_tensor(f"{name}_dequantized", t.shape, "float32")
                dequantize.append(Operator("DEQUANTIZE", [half], [full]))
                widened[name] = full  # type: ignore[index]
            op.inputs[i] = widened[name]  # type: ignore[index]
    graph.operators = dequantize + graph.operators
    for name in widened:
        if not graph.consumers(name) and name not in graph.outputs:
            del graph.tensors[name]
    return graph


def to_dynamic_range(graph: Graph) -> tuple[Graph, list[str]]:
    """int8 per-channel weights on the hybrid ops (in place); returns the graph and the ops
    left fully float (any other weighted op, e.g. TRANSPOSE_CONV, which has no hybrid kernel)."""
    left_float: list[str] = []
    for op in graph.operators:
        if op.op not in HYBRID_OPS:
            if (
                any(
                    n is not None
                    and graph.tensors[n].is_const
                    and graph.tensors[n].dtype == "float32"
                    for n in op.inputs[1:2]
                )
                and op.op in quant.WEIGHT_CHANNEL_AXIS
            ):
                left_float.append(op.op)
            continue
        name = op.inputs[1]
        if name is None or not graph.tensors[name].is_const:
            continue
        w = graph.tensors[name]
        if w.dtype != "float32" or w.sparsity is not None:
            continue
        w_q, params = quant.symmetric_per_channel(w.data, quant.WEIGHT_CHANNEL_AXIS[op.op])  # type: ignore[arg-type]
        stored = graph.add_const(f"{name}_int8", w_q, "int8")
        quant.set_params(graph.tensors[stored], params)
        op.inputs[1] = stored
        if op.op == "FULLY_CONNECTED":
            # The converter's default since TF 2.3: per-row asymmetric input quantization,
            # more accurate than symmetric for post-ReLU (all non-negative) activations.
            op.options["asymmetric_quantize_inputs"] = True
        if not graph.consumers(name) and name not in graph.outputs:
            del graph.tensors[name]
    return graph, left_float
