"""Shared fixtures: small models exported once per session, the CIFAR-10 file if present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
CIFAR = ROOT.parent / "shared" / "data" / "cifar10" / "train.npz"


@pytest.fixture(scope="session")
def cifar_path() -> Path:
    if not CIFAR.is_file():
        pytest.skip(f"CIFAR-10 not found at {CIFAR} (needs ../shared/data/cifar10/train.npz)")
    return CIFAR


def randomize_batchnorm(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BN statistics, so folding errors would show."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) * 2 - 1)
            m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=gen) - 0.5)
    return model.eval()


@pytest.fixture
def tiny_npz(tmp_path) -> Path:
    """A 3-class, 12x10 RGB npz data set with a learnable pattern (class = brightest third)."""
    rng = np.random.default_rng(0)
    n = 90
    labels = np.repeat(np.arange(3), n // 3)
    images = rng.integers(0, 60, size=(n, 12, 10, 3)).astype(np.uint8)
    for i, lab in enumerate(labels):
        images[i, :, :, lab] += 150
    path = tmp_path / "tiny.npz"
    np.savez(path, images=images, labels=labels, classes=np.array(["r", "g", "b"]))
    return path
