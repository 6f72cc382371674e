"""Whole-model parity: torch (eval) vs onnxruntime vs LiteRT on dynamo-exported ONNX."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from nets import NETS, build
from tflite_testutil import interpreter_op_counts, run_ort, run_tflite

from exporter.tflite import convert_onnx_file

INPUT = (1, 3, 32, 32)


def export_onnx(model: torch.nn.Module, path: Path) -> Path:
    """torch.onnx.export(dynamo=True) with a dynamic batch, its chatter silenced."""
    x = torch.randn(*INPUT)
    quiet = io.StringIO()
    logging.getLogger("torch").setLevel(logging.ERROR)
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(quiet),
        contextlib.redirect_stderr(quiet),
    ):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (x,),
            dynamo=True,
            external_data=False,
            opset_version=18,
            dynamic_shapes={"x": {0: torch.export.Dim("N")}},
        )
        program.save(str(path))
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, tuple[torch.nn.Module, Path]]:
    root = tmp_path_factory.mktemp("onnx")
    return {name: (build(name), export_onnx(build(name), root / f"{name}.onnx")) for name in NETS}


@pytest.mark.parametrize("name", list(NETS))
def test_model_parity(name, exported, tmp_path):
    model, onnx_path = exported[name]
    x = np.random.default_rng(0).standard_normal(INPUT).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    onnx_out = next(iter(run_ort(onnx.load(str(onnx_path)), {"x": x}).values()))
    result = convert_onnx_file(onnx_path, tmp_path / f"{name}.tflite")
    data = result.path.read_bytes()
    assert np.abs(onnx_out - ref).max() <= 1e-4
    for resolver in ("xnnpack", "builtin"):
        got = next(iter(run_tflite(data, {"x": x}, resolver).values()))
        assert np.abs(got - ref).max() <= 1e-4, resolver
    counts = interpreter_op_counts(data)
    assert counts == result.op_counts
    if name != "mixed":
        assert result.transpose_count == 0 and "TRANSPOSE" not in counts
    # BatchNorm and activations never survive as separate ops in these nets.
    assert not {"RELU", "RELU6"} & set(counts), counts


def test_seed_op_counts(exported, tmp_path):
    result = convert_onnx_file(exported["seed"][1], tmp_path / "seed.tflite")
    assert result.op_counts == {"CONV_2D": 2, "FULLY_CONNECTED": 2, "MAX_POOL_2D": 2, "RESHAPE": 1}


def test_seed_nchw_input_has_one_boundary_transpose(exported, tmp_path):
    model, onnx_path = exported["seed"]
    result = convert_onnx_file(onnx_path, tmp_path / "seed_nchw.tflite", input_layout="nchw")
    assert result.transpose_count == 1 and result.input_layout == "nchw"
    x = np.random.default_rng(1).standard_normal(INPUT).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    got = next(iter(run_tflite(result.path.read_bytes(), {"x": x}, nhwc=False).values()))
    assert np.abs(got - ref).max() <= 1e-4


def test_seed_conversion_size(exported, tmp_path):
    onnx_path = exported["seed"][1]
    result = convert_onnx_file(onnx_path, tmp_path / "seed.tflite")
    onnx_size = onnx_path.stat().st_size
    assert abs(result.bytes - onnx_size) / onnx_size < 0.01, (result.bytes, onnx_size)
