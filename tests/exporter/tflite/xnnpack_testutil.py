"""Helpers for the XNNPACK-coverage tests: which ops LiteRT leaves outside the delegate, and
torch modules checked end to end (fp32 parity, int8 agreement with onnxruntime's QDQ)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from ai_edge_litert.interpreter import Interpreter
from int8_testutil import TfliteRunner, ort_probe, output_scale, qdq_model, smooth_images
from tflite_testutil import assert_close, interpreter_op_counts, run_ort, run_tflite

from exporter.onnx.export import export_onnx
from exporter.tflite import convert_model
from runtime_check.coverage import ops_outside_delegate


def outside_xnnpack(data: bytes) -> list[str]:
    """Ops LiteRT runs on its own kernels, outside the XNNPACK partition(s)."""
    it = Interpreter(model_content=data)  # the default resolver applies XNNPACK
    it.allocate_tensors()
    outside = ops_outside_delegate(it)
    assert outside is not None, "the interpreter does not expose its nodes"
    return outside


@dataclass
class Converted:
    data: bytes
    ops: dict[str, int]
    stats: dict


def fp32_parity(module: torch.nn.Module, chw: tuple[int, int, int], root: Path) -> Converted:
    """Export, convert, and compare with ORT on the same ONNX (max |delta| <= 1e-5 of span)."""
    path = export_onnx(module.eval(), chw, root / "fp32.onnx")
    model = onnx.load(str(path))
    data, stats = convert_model(model)
    x = smooth_images(2, chw, seed=3)
    for image in x:
        feeds = {"input": image[None]}
        ref = run_ort(model, feeds)
        got = run_tflite(data, feeds, "xnnpack")
        for name, value in ref.items():
            span = float(value.max() - value.min()) or 1.0
            assert_close(got[name] / span, value / span, 1e-5)
    return Converted(data, interpreter_op_counts(data), stats)


def int8_agreement(
    module: torch.nn.Module,
    chw: tuple[int, int, int],
    root: Path,
    probe: str | None = None,
    lsb: float = 1.0,
    delegate: str = "xnnpack",
) -> Converted:
    """QDQ-quantize, convert to full-integer TFLite, and require LiteRT (XNNPACK and builtin
    kernels) to agree with ORT on the QDQ model within ``lsb`` output steps.

    With ``probe`` (an ONNX op type), the int8 value the first such node writes must also agree
    within 1 step: the op under test, before later layers can amplify a 1-step difference
    that ORT's float-then-round and the integer kernels legitimately have.
    """
    torch.manual_seed(0)
    _, int8 = qdq_model(module.eval(), chw, root, calib=smooth_images(32, chw, seed=1))
    data, stats = convert_model(onnx.load(str(int8)), delegate=delegate)
    assert stats["precision"] == "int8"
    x = smooth_images(8, chw, seed=2)
    ref = ort_probe(int8, x)
    step = output_scale(int8)
    for resolver in ("xnnpack", "builtin"):
        got = TfliteRunner(data, resolver)(x)
        err = float(np.abs(got - ref).max())
        assert err <= (lsb + 0.01) * step, f"{resolver}: {err / step:.2f} LSB > {lsb}"
    if probe is not None:
        value = next(n.output[0] for n in onnx.load(str(int8)).graph.node if n.op_type == probe)
        runner = TfliteRunner(data, "builtin", preserve=True)
        details = {d["name"]: d for d in runner.it.get_tensor_details()}
        # An op run in float: compare the QUANTIZE of its result.
        in_float = details[value]["dtype"] == np.float32
        value_in_model = f"{value}_int8" if in_float else value
        got = runner(x, value_in_model)
        detail = details[value_in_model]
        probe_step = detail["quantization"][0]
        err = float(np.abs(got - ort_probe(int8, x, value)).max())
        assert err <= 1.01 * probe_step, f"{probe}: {err / probe_step:.2f} LSB > 1"
    return Converted(data, interpreter_op_counts(data), stats)
