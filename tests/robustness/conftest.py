"""Shared fixtures of the robustness catalogue: one trained model and one output directory.

Everything heavy is built once per session and copied where a test could modify it, so the
catalogue stays fast (the whole package runs in a few minutes on 2 cores).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.exporter.cli.test_cli import invoke

# Small runs: one fine-tune epoch, few timed runs, a 120-image eval batch. The accuracy budget
# is opened up because a 2-epoch model pruned to 75 % may lose more than 1.5 points, and these
# tests are about robustness, not accuracy (exit 1 would hide what they check).
FAST = (
    "--set",
    "runtime.runs=5",
    "--set",
    "runtime.warmup=1",
    "--set",
    "compress.finetune.epochs=1",
    "--set",
    "eval.samples=120",
    "--set",
    "budgets.max_accuracy_drop=100",
)
FP32_ONLY = (
    "--set",
    'export.formats=["onnx","tflite"]',
    "--set",
    'export.precisions=["fp32"]',
    "--set",
    'export.storage=["dense"]',
)


@pytest.fixture(scope="session")
def seed_weights(tmp_path_factory) -> Path:
    """The seed CNN trained 2 epochs on digits (weights + the normalization sidecar)."""
    tmp = tmp_path_factory.mktemp("robust-seed")
    res = invoke(
        "train",
        "--model",
        "seed-cnn",
        "--data",
        "digits",
        "--epochs",
        "2",
        "--out",
        tmp / "seed.pt",
        "-q",
    )
    assert res.exit_code == 0, res.output
    return tmp / "seed.pt"


@pytest.fixture(scope="session")
def seed_out(seed_weights, tmp_path_factory) -> Path:
    """An output directory with model.fp32.onnx / .tflite and eval_batch.npz (read-only use)."""
    out = tmp_path_factory.mktemp("robust-out") / "dist"
    res = invoke(
        "run",
        "--model",
        "seed-cnn",
        "--weights",
        seed_weights,
        "--out",
        out,
        "-q",
        *FAST,
        *FP32_ONLY,
    )
    assert res.exit_code == 0, res.output
    return out
