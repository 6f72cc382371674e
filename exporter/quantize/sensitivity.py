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

from exporter.onnx.export import onnx_session

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
# Every layer's output of both models is held for one batch: images per batch are chosen so
# that they take about this many bytes (a large net at 224x224 exposes hundreds of MB per image).
OUTPUT_BYTES = 256 << 20
# The fewest images a sampled sensitivity pass uses, however large the net.
MIN_IMAGES = 8
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
    return sampled_sensitivity(fp32_path, int8_path, inputs)[0]


def sampled_sensitivity(
    fp32_path, int8_path, inputs: np.ndarray, budget_bytes: int | None = None
) -> tuple[list[dict], int]:
    """:func:`layer_sensitivity` on the first images of ``inputs`` whose layer outputs (both
    models) add up to about ``budget_bytes`` (at least MIN_IMAGES; all with None): the pass
    then costs about the same on a large net as on a small one. Returns the rows and the
    number of images used."""
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
    fp_outs = [o.name for o in s_fp.get_outputs()]
    q_outs = [o.name for o in s_q.get_outputs()]
    # Sums over every element of every image, batch by batch: holding every layer's output
    # for all images at once would take gigabytes on a large net (ResNet-50 at 224x224).
    # Per tensor: signal sum(a^2), noise sum((a-b)^2), sum(a*b), sum(b^2).
    sums = {t: np.zeros(4) for t in names}
    fixed_batch = bool(s_fp.get_inputs()[0].shape) and s_fp.get_inputs()[0].shape[0] == 1
    i, step = 0, 1  # the first image alone: it tells how many bytes an image's outputs take
    while i < len(inputs):
        batch = inputs[i : i + step]
        out_fp = dict(zip(fp_outs, _run(s_fp, batch), strict=True))
        out_q = dict(zip(q_outs, _run(s_q, batch), strict=True))
        for tensor in names:
            a = out_fp[tensor].astype(np.float64).ravel()
            b = out_q[q_name[tensor]].astype(np.float64).ravel()
            d = a - b
            sums[tensor] += (a @ a, d @ d, a @ b, b @ b)
        if i == 0:
            per_image = max(1, sum(v.nbytes for v in (*out_fp.values(), *out_q.values())))
            if budget_bytes is not None:
                inputs = inputs[: max(MIN_IMAGES, budget_bytes // per_image)]
            step = 1 if fixed_batch else max(1, min(64, OUTPUT_BYTES // per_image))
        i += len(batch)
    rows = []
    for node, op, tensor in layers:
        signal, noise, dot, energy = (float(v) for v in sums[tensor])
        denom = math.sqrt(signal) * math.sqrt(energy)
        rows.append(
            {
                "node": node,
                "op": op,
                "tensor": tensor,
                "cosine": dot / denom if denom else 1.0,
                "snr_db": 10 * math.log10(signal / noise) if noise > 0 and signal > 0 else math.inf,
            }
        )
    return rows, min(i, len(inputs))


def _run(sess, x: np.ndarray) -> list[np.ndarray]:
    return sess.run(None, {sess.get_inputs()[0].name: x})


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
