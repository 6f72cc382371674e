"""The zoo's steps, shared by tests/zoo/test_zoo.py and bench/zoo.py: each calls edgepack's own
functions as ``exporter.pipeline`` does (ONNX export, the TFLite writer, the int8 QDQ
quantizer), and runs the results in onnxruntime and in LiteRT with its default XNNPACK delegate.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from torch import nn

from exporter.onnx.export import export_onnx
from exporter.quantize.onnx_int8 import QuantSettings, quantize_onnx
from exporter.tflite import ConversionResult, convert_onnx_file
from runtime_check.coverage import ops_outside_delegate


def images(n: int, size: int, seed: int) -> np.ndarray:
    """``n`` random NCHW images, as normalized inputs look (zero mean, unit spread)."""
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


def torch_logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def float64_logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """The exact reference: the same network computed in float64 (on a copy)."""
    with torch.no_grad():
        return copy.deepcopy(model).double()(torch.from_numpy(x).double()).numpy()


def fp32_tolerance(model: nn.Module, x: np.ndarray, floor: float) -> tuple[np.ndarray, float]:
    """The float64 logits and how far an fp32 runtime may be from them, as a fraction of the
    logit span: ``floor``, or twice torch's own float32 error where the network amplifies
    rounding beyond it (deep random-weight nets: resnet50 at 64x64 loses 2.5e-5 in torch)."""
    exact = float64_logits(model, x)
    return exact, max(floor, 2 * relative_error(torch_logits(model, x), exact))


def export(model: nn.Module, size: int, path: Path) -> Path:
    return export_onnx(model, (3, size, size), path)


def to_tflite(onnx_path: Path, tflite_path: Path) -> ConversionResult:
    """The pipeline's dense conversion with the default recipe (NHWC input, XNNPACK target)."""
    return convert_onnx_file(onnx_path, tflite_path)


def quantize(fp32_onnx: Path, out: Path, calib_x: np.ndarray) -> Path:
    """Full 8-bit QDQ (minmax, per-channel weights): what the int8 TFLite is converted from
    (the pipeline's first search attempt, or the portable twin of a 7-bit model)."""
    return quantize_onnx(
        fp32_onnx, out, QuantSettings(), calib_inputs=calib_x, cache=out.with_suffix(".calib.json")
    )


def ort_logits(onnx_path: Path, x: np.ndarray, *, fuse: bool = True) -> np.ndarray:
    """``fuse=False``: no graph optimization, so a QDQ model runs as float ops between
    quantize / dequantize pairs (the simulation) instead of ORT's fused integer kernels."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    if not fuse:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])


def litert(
    tflite_path: Path, x: np.ndarray, *, xnnpack: bool = True
) -> tuple[np.ndarray, list[str] | None]:
    """Logits of the NCHW images ``x`` through LiteRT with its default XNNPACK delegate (or its
    builtin kernels only), and the ops the delegate left to LiteRT's own kernels (``[]``: fully
    delegated; None without the delegate)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kind = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    it = Interpreter(model_path=str(tflite_path), num_threads=1, experimental_op_resolver_type=kind)
    it.allocate_tensors()
    outside = ops_outside_delegate(it) if xnnpack else None
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    out = []
    for img in x.transpose(0, 2, 3, 1):
        it.set_tensor(i["index"], img[None])
        it.invoke()
        out.append(it.get_tensor(o["index"]).copy())
    return np.concatenate(out).reshape(len(x), -1), outside


def relative_error(got: np.ndarray, ref: np.ndarray) -> float:
    """max|got - ref| as a fraction of the reference logits' span (max - min over the batch)."""
    return float(np.abs(got - ref).max() / (ref.max() - ref.min()))


def top1_agreement(got: np.ndarray, ref: np.ndarray) -> float:
    return float((got.argmax(1) == ref.argmax(1)).mean())


def output_lsb(qdq_path: Path) -> float | None:
    """The int8 step of the QDQ model's output: the scale of the DequantizeLinear that writes it
    (None when the output is not dequantized there)."""
    model = onnx.load(str(qdq_path), load_external_data=False)
    out = model.graph.output[0].name
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.output[0] == out and node.input[1] in inits:
            return float(numpy_helper.to_array(inits[node.input[1]]).reshape(-1)[0])
    return None
