"""Shared fixtures of the robustness catalogue: one trained model and one output directory.

Everything heavy is built once per session and copied where a test could modify it, so the
catalogue stays fast (the whole package runs in a few minutes on 2 cores).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import invoke
from tests.robustness.options import FAST, FP32_ONLY


@pytest.fixture(scope="session")
def seed_weights(digits_seed) -> Path:
    """The seed CNN trained on digits (weights + the normalization sidecar)."""
    return digits_seed


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
