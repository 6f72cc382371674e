"""Helpers for the int8 TFLite tests: QDQ models from tiny torch modules, ORT / LiteRT probes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from ai_edge_litert.interpreter import Interpreter
from tflite_testutil import RESOLVERS

from exporter.onnx.export import export_onnx
from exporter.quantize.onnx_int8 import QuantSettings, quantize_onnx


def smooth_images(n: int, chw: tuple[int, int, int], seed: int) -> np.ndarray:
    """Structured random images: low-resolution noise upsampled, roughly unit variance."""
    gen = torch.Generator().manual_seed(seed)
    c, h, w = chw
    low = torch.randn(n, c, max(h // 4, 2), max(w // 4, 2), generator=gen)
    img = torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    return (img * 1.5).numpy().astype(np.float32)


def qdq_model(
    module: torch.nn.Module,
    chw: tuple[int, int, int],
    root: Path,
    calib: np.ndarray | None = None,
    seed: int = 0,
) -> tuple[Path, Path]:
    """(fp32 ONNX, QDQ int8 ONNX) for ``module``, calibrated on seeded random data."""
    fp32 = export_onnx(module.eval(), chw, root / "fp32.onnx")
    if calib is None:
        calib = np.random.default_rng(seed).standard_normal((16, *chw)).astype(np.float32)
    int8 = root / "int8.onnx"
    quantize_onnx(
        fp32,
        int8,
        QuantSettings(method="minmax", reduce_range=False),
        calib_inputs=calib,
        cache=root / "calib.json",
    )
    return fp32, int8


def _dq_output_of(model: onnx.ModelProto, value: str) -> str:
    """Name of the DequantizeLinear output that re-reads ``value`` (its int8-rounded copy)."""
    q_out = {
        n.output[0]
        for n in model.graph.node
        if n.op_type == "QuantizeLinear" and n.input[0] == value
    }
    for n in model.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in q_out:
            return n.output[0]
    return value  # already a graph output


def ort_probe_is_float(int8_path: Path, value: str) -> bool:
    """True when the QDQ model never rounds ``value`` to int8 (ORT computes it in float)."""
    return _dq_output_of(onnx.load(str(int8_path)), value) == value


def ort_probe(int8_path: Path, x: np.ndarray, value: str | None = None) -> np.ndarray:
    """ORT on the QDQ model; ``value`` picks the int8-rounded copy of an inner ONNX value."""
    model = onnx.load(str(int8_path))
    name = model.graph.output[0].name
    if value is not None:
        name = _dq_output_of(model, value)
        if name not in [o.name for o in model.graph.output]:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0].name
    outs = [sess.run([name], {inp: x[i : i + 1]})[0] for i in range(len(x))]
    return np.concatenate(outs)


class TfliteRunner:
    """One interpreter, fed NCHW float (or uint8 NHWC) batches one image at a time."""

    def __init__(self, data: bytes, resolver: str = "builtin", preserve: bool = False):
        self.it = Interpreter(
            model_content=data,
            experimental_op_resolver_type=RESOLVERS[resolver],
            experimental_preserve_all_tensors=preserve,
        )
        self.it.allocate_tensors()
        self.inp = self.it.get_input_details()[0]
        self.out = self.it.get_output_details()[0]

    def _feed(self, image: np.ndarray) -> None:
        x = image[None]
        if x.ndim == 4 and self.inp["dtype"] != np.uint8:
            x = x.transpose(0, 2, 3, 1)
        if self.inp["dtype"] == np.int8:
            scale, zp = self.inp["quantization"]
            x = np.clip(np.rint(x / scale) + zp, -128, 127)
        self.it.set_tensor(self.inp["index"], np.ascontiguousarray(x.astype(self.inp["dtype"])))
        self.it.invoke()

    def tensor(self, detail: dict) -> np.ndarray:
        y = self.it.get_tensor(detail["index"])
        scale, zp = detail["quantization"]
        y = (y.astype(np.float32) - zp) * scale if detail["dtype"] in (np.int8, np.uint8) else y
        return y.transpose(0, 3, 1, 2) if y.ndim == 4 else y

    def __call__(self, x: np.ndarray, tensor: str | None = None) -> np.ndarray:
        detail = self.out
        if tensor is not None:
            detail = next(d for d in self.it.get_tensor_details() if d["name"] == tensor)
        outs = []
        for image in x:
            self._feed(image)
            outs.append(self.tensor(detail))
        return np.concatenate(outs)


def output_scale(int8_path: Path) -> float:
    """Scale of the QuantizeLinear feeding the QDQ model's output."""
    model = onnx.load(str(int8_path))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    out = model.graph.output[0].name
    dq = next(n for n in model.graph.node if n.output[0] == out)
    return float(inits[dq.input[1]])
