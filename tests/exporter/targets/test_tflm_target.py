"""MCU targets end to end: `edgepack run` / `check` with a TensorFlow Lite Micro recipe.

Real parts only: the trained seed CNN on digits and on a CIFAR-sized (32x32x3) data set, TFLM's
own kernels (tflite-micro), LiteRT as the independent reference for the int8 answers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from exporter.artifacts import Artifact
from exporter.errors import RuntimeCheckError
from exporter.recipe import load_recipe
from exporter.targets.validate import check_tflm_ops
from runtime_check.evaluate import load_batch, logits_for
from runtime_check.tflm import _trial, tflm_logits
from tests.helpers import assert_one_line_error, invoke

pytest.importorskip("tflite_micro")


def _int8_row(report: dict) -> dict:
    (row,) = [a for a in report["artifacts"] if a["path"] == "model.int8.tflite"]
    return row


def _tflm_vs_litert(out: Path, arena: int) -> float:
    """Top-1 agreement of TFLM and LiteRT (built-in kernels) on every eval image."""
    batch = out / "eval_batch.npz"
    model = (out / "model.int8.tflite").read_bytes()
    tflm = tflm_logits(model, load_batch(batch), arena)
    litert = logits_for(out / "model.int8.tflite", batch, delegate="none")
    return float((tflm.argmax(1) == litert.argmax(1)).mean())


def _check_mcu_run(out: Path) -> dict:
    report = json.loads((out / "report.json").read_text())
    budgets = load_recipe("nano33ble").budgets
    row = _int8_row(report)
    assert row["status"] == "ok" and row["runtime"] == "tflite-micro"
    assert report["target"]["device"] == "tflm"
    # The smallest arena the model runs in: it runs there, and not in one byte less.
    arena = row["arena_bytes"]
    model = (out / "model.int8.tflite").read_bytes()
    assert _trial(model, arena)[0] and not _trial(model, arena - 1)[0]
    assert arena <= budgets.max_arena_bytes and row["budgets"]["max_arena_bytes"]["ok"]
    assert row["flash_bytes"] == len(model) <= budgets.max_flash_bytes
    assert any(line.startswith("Arena allocation total") for line in row["arena_breakdown"])
    # No wall time of the reference kernels passes for the board's latency.
    assert row["latency_ms"] is None and "max_latency_p90_ms" not in row["budgets"]
    assert _tflm_vs_litert(out, arena) >= 0.99
    return report


def test_digits_through_nano33ble_is_validated_under_tflm(mcu_digits):
    report = _check_mcu_run(mcu_digits)
    assert report["passed"]
    (fp32,) = [a for a in report["artifacts"] if a["precision"] == "fp32"] or [None]
    if fp32 is not None:  # an fp32 model is not what a TFLM target runs: excluded, not failed
        assert fp32["status"] == "skipped" and "int8" in fp32["reason"]


@pytest.fixture(scope="module")
def cifar_sized(tmp_path_factory) -> Path:
    """A learnable 32x32 RGB set (the class is the brightest channel), the seed CNN trained on
    it and run through nano33ble."""
    tmp = tmp_path_factory.mktemp("cifar-sized")
    rng = np.random.default_rng(0)
    labels = np.arange(600) % 3
    images = rng.integers(0, 120, (600, 32, 32, 3), dtype=np.uint8)
    for i, lab in enumerate(labels):
        images[i, :, :, lab] += rng.integers(60, 130, dtype=np.uint8)
    np.savez(tmp / "rgb.npz", images=images, labels=labels, classes=np.array(["r", "g", "b"]))
    data = f"npz:{tmp / 'rgb.npz'}"
    res = invoke("train", "--data", data, "--epochs", "2", "--out", tmp / "w.pt", "-q")
    assert res.exit_code == 0, res.output
    out = tmp / "dist"
    res = invoke(
        "run", "--model", "seed-cnn", "--weights", tmp / "w.pt", "--data", data,
        "--target", "nano33ble", "--out", out, "-q",
    )  # fmt: skip
    assert res.exit_code in (0, 1), res.output
    return out


def test_a_cifar_sized_net_through_nano33ble_is_validated_under_tflm(cifar_sized):
    report = _check_mcu_run(cifar_sized)
    assert report["model"]["input_shape"] == [3, 32, 32]


@pytest.mark.parametrize(
    "budget, figure", [("max_arena_bytes", "arena_bytes"), ("max_flash_bytes", "flash_bytes")]
)
def test_a_model_over_a_board_budget_fails_with_the_figure_and_the_budget(
    mcu_digits, tmp_path, budget, figure
):
    out = tmp_path / "dist"
    shutil.copytree(mcu_digits, out)
    res = invoke("check", out, "--target", "nano33ble", "--set", f"budgets.{budget}=1000", "-q")
    assert res.exit_code == 1, res.output
    report = json.loads((out / "checks" / "nano33ble.json").read_text())
    value = _int8_row(report)[figure]
    assert value > 1000
    assert f"model.int8.tflite: {budget} {value:,} vs limit 1,000" in report["reasons"]


def test_a_float_operator_is_named_with_the_target_before_anything_runs(mcu_digits, tmp_path):
    # The writer's float model stands for an int8 model whose every layer was left in float.
    from exporter.tflite import convert_onnx_file

    convert_onnx_file(mcu_digits / "model.fp32.onnx", tmp_path / "model.int8.tflite")
    art = Artifact("model.int8.tflite", "tflite", "int8", "dense")
    with pytest.raises(RuntimeCheckError) as err:
        check_tflm_ops(tmp_path, [art], load_recipe("nano33ble"))
    msg = str(err.value)
    assert "\n" not in msg
    assert "operator(s) left in float" in msg and "target 'nano33ble'" in msg
    assert "#0 CONV_2D 'relu'" in msg


def test_an_operator_tflm_lacks_is_named_with_the_target(digits_seed, tmp_path):
    # Sparse storage adds DENSIFY, which TFLM has no kernel for.
    out = tmp_path / "x86"
    res = invoke(
        "run", "--model", "seed-cnn", "--weights", digits_seed, "--out", out, "-q",
        "--set", 'export.formats=["tflite"]', "--set", 'export.precisions=["int8"]',
        "--set", 'export.storage=["dense","sparse"]', "--sparsity", "0.9", "--epochs", "0",
        "--set", "compress.prune.schedule=oneshot", "--set", "budgets.max_accuracy_drop=100",
        "--set", "runtime.runs=2",
    )  # fmt: skip
    assert res.exit_code in (0, 1), res.output
    assert (out / "model.int8.sparse.tflite").is_file()
    res = invoke("check", out, "--target", "nano33ble", "-q")
    assert_one_line_error(res, "model.int8.sparse.tflite", "TFLM has no kernel for DENSIFY",
                          "target 'nano33ble'", "DENSIFY '")  # fmt: skip
    assert not (out / "checks").exists()
