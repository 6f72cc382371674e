"""The whole precision menu through `edgepack run`: one digits run asks for all five precisions
and every file it writes is reloaded here and run by onnxruntime and LiteRT directly, not by
the validator that wrote the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from runtime_check.batch import load_batch
from tests.helpers import invoke

PRECISIONS = ("fp32", "fp16", "dynamic", "int8", "int16x8")
FAST = (
    "--set", "runtime.runs=5",
    "--set", "runtime.warmup=1",
    "--set", "compress.finetune.epochs=1",
    "--set", 'export.storage=["dense"]',
    "--set", f"export.precisions={json.dumps(list(PRECISIONS))}",
)  # fmt: skip


@pytest.fixture(scope="module")
def run_out(digits_seed, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("precisions") / "dist"
    res = invoke("run", "--model", "seed-cnn", "--weights", digits_seed, "--out", out, *FAST)
    assert res.exit_code == 0, res.output
    return out


def _onnx_logits(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])


def _tflite_logits(path: Path, x_nchw: np.ndarray) -> np.ndarray:
    it = Interpreter(model_path=str(path), experimental_op_resolver_type=OpResolverType.AUTO)
    it.allocate_tensors()
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    assert i["dtype"] == np.float32 and o["dtype"] == np.float32  # every precision keeps float I/O
    out = []
    for img in x_nchw.transpose(0, 2, 3, 1):
        it.set_tensor(i["index"], img[None])
        it.invoke()
        out.append(it.get_tensor(o["index"]).copy())
    return np.concatenate(out)


def _logits(path: Path, x: np.ndarray) -> np.ndarray:
    return _onnx_logits(path, x) if path.suffix == ".onnx" else _tflite_logits(path, x)


def test_every_precision_in_both_formats_is_written_validated_and_runs(run_out):
    report = json.loads((run_out / "report.json").read_text())
    rows = {a["path"]: a for a in report["artifacts"]}
    expected = {f"model.{p}.{fmt}" for p in PRECISIONS for fmt in ("onnx", "tflite")}
    assert set(rows) == expected
    for path, row in rows.items():
        assert row["status"] == "ok", row
        assert (run_out / path).stat().st_size == row["bytes"]

    batch = load_batch(run_out / "eval_batch.npz")
    x, labels = batch["inputs"], batch["labels"]
    assert len(x) >= 200  # the 99.5 % figure below must be able to tell one image apart
    logits = {path: _logits(run_out / path, x) for path in rows}
    for path, out in logits.items():
        assert out.shape == (len(x), 10) and np.isfinite(out).all(), path
        # The reloaded file scores what the report says it scored (one image of slack: the
        # validator's runtime build may differ from this process's in its last bits).
        acc = 100.0 * float((out.argmax(1) == labels).mean())
        assert acc == pytest.approx(rows[path]["accuracy"], abs=100.0 / len(x) + 1e-9), path

    for fmt in ("onnx", "tflite"):
        ref = logits[f"model.fp32.{fmt}"]
        half = logits[f"model.fp16.{fmt}"]
        span = float(ref.max() - ref.min())
        assert np.abs(half - ref).max() <= 1e-2 * span, fmt
        assert (half.argmax(1) == ref.argmax(1)).mean() >= 0.995, fmt
        # What each precision is for: fp16 halves the weights, int8 weights quarter them. On
        # this 22k-parameter net the ONNX graph's names and QDQ scales are a large share of
        # the file, hence its looser bound.
        fp32_bytes = rows[f"model.fp32.{fmt}"]["bytes"]
        assert rows[f"model.fp16.{fmt}"]["bytes"] < 0.6 * fp32_bytes, fmt
        for p in ("dynamic", "int8", "int16x8"):
            limit = {"tflite": 0.35, "onnx": 0.45}[fmt]
            assert rows[f"model.{p}.{fmt}"]["bytes"] < limit * fp32_bytes, (p, fmt)


def test_report_rows_say_which_ops_ran_outside_xnnpack(run_out):
    rows = {a["path"]: a for a in json.loads((run_out / "report.json").read_text())["artifacts"]}
    for p in ("fp32", "fp16", "int8"):
        assert rows[f"model.{p}.tflite"]["ops_outside_delegate"] == [], p
    # int16x8 has no XNNPACK kernels: LiteRT's builtin kernels run it, and the row must name
    # the model's ops rather than claim full delegation.
    outside = rows["model.int16x8.tflite"]["ops_outside_delegate"]
    assert isinstance(outside, list) and "CONV_2D" in outside and "FULLY_CONNECTED" in outside
    assert isinstance(rows["model.dynamic.tflite"]["ops_outside_delegate"], list)
    for p in PRECISIONS:  # onnxruntime has no XNNPACK delegate here: no claim either way
        assert rows[f"model.{p}.onnx"]["ops_outside_delegate"] is None, p
