"""Per-layer int8 sensitivity: how far each layer's output drifts from float once quantized.

Both models expose the outputs of their compute layers (the QDQ model keeps the float tensor
names of the original graph), run on the same images, and each layer gets the cosine
similarity and SNR of int8 vs float. The errors accumulate along the graph, so the first
layer whose SNR falls below the threshold is where the model starts to diverge.
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from exporter.onnx.export import onnx_session, run_batched

LAYER_OPS = {
    "Conv",
    "ConvTranspose",
    "Gemm",
    "MatMul",
    "Add",
    "Mul",
    "Concat",
    "GlobalAveragePool",
    "AveragePool",
    "MaxPool",
    "ReduceMean",
    "Softmax",
}
# ORT's quantizer folds these into the layer before them, which then owns their output name.
FUSED_ACTIVATIONS = {"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSwish", "HardSigmoid", "Tanh"}
# Below this SNR (dB) a layer's int8 output is called diverging.
DIVERGENCE_SNR_DB = 20.0
# The SNR of a full-scale signal through an ideal 8-bit quantizer: the ceiling of any int8 layer.
IDEAL_INT8_SNR_DB = 6.02 * 8 + 1.76


def _expose(model: onnx.ModelProto, names: list[str]) -> bytes:
    have = {o.name for o in model.graph.output}
    for name in names:
        if name not in have:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return model.SerializeToString()


def layer_sensitivity(fp32_path, int8_path, inputs: np.ndarray) -> list[dict]:
    """Rows in graph order: node, op, tensor, cosine, snr_db (int8 vs float)."""
    fp = onnx.load(str(fp32_path))
    q = onnx.load(str(int8_path))
    q_tensors = {o for n in q.graph.node for o in n.output}
    producer = {o: n for n in fp.graph.node for o in n.output}
    layers = []
    for n in fp.graph.node:
        if n.output[0] not in q_tensors:
            continue
        if n.op_type in LAYER_OPS:
            layers.append((n.name or n.output[0], n.op_type, n.output[0]))
        elif n.op_type in FUSED_ACTIVATIONS and n.input[0] in producer:
            src = producer[n.input[0]]
            layers.append((src.name or src.output[0], f"{src.op_type}+{n.op_type}", n.output[0]))
    # The int8 value of a tensor is what its DequantizeLinear hands on: an activation folded
    # into the layer before it is only applied by the quantization range.
    q_name = {
        t: f"{t}_DequantizeLinear_Output" if f"{t}_DequantizeLinear_Output" in q_tensors else t
        for _, _, t in layers
    }
    names = [t for _, _, t in layers]
    # Graph optimisations would fuse away the intermediate tensors we read.
    s_fp = onnx_session(_expose(fp, names), optimize=False)
    s_q = onnx_session(_expose(q, list(q_name.values())), optimize=False)
    out_fp = dict(zip([o.name for o in s_fp.get_outputs()], run_batched(s_fp, inputs), strict=True))
    out_q = dict(zip([o.name for o in s_q.get_outputs()], run_batched(s_q, inputs), strict=True))
    rows = []
    for node, op, tensor in layers:
        a = out_fp[tensor].astype(np.float64).ravel()
        b = out_q[q_name[tensor]].astype(np.float64).ravel()
        noise = float(np.sum((a - b) ** 2))
        signal = float(np.sum(a**2))
        denom = float(np.linalg.norm(a) * np.linalg.norm(b))
        rows.append(
            {
                "node": node,
                "op": op,
                "tensor": tensor,
                "cosine": float(a @ b / denom) if denom else 1.0,
                "snr_db": 10 * math.log10(signal / noise) if noise > 0 and signal > 0 else math.inf,
            }
        )
    return rows


def first_divergence(rows: list[dict], threshold_db: float = DIVERGENCE_SNR_DB) -> str | None:
    for row in rows:
        if row["snr_db"] < threshold_db:
            return row["node"]
    return None


def most_sensitive_nodes(rows: list[dict], count: int) -> list[str]:
    """The ``count`` weight layers whose own SNR drop (vs the layer before) is largest."""
    scored = []
    prev = IDEAL_INT8_SNR_DB
    for row in rows:
        snr = row["snr_db"]
        if row["op"].split("+")[0] in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            scored.append((prev - min(snr, IDEAL_INT8_SNR_DB), row["node"]))
        prev = min(snr, IDEAL_INT8_SNR_DB)
    return [node for _, node in sorted(scored, reverse=True)[:count]]
