"""Channels-last reference passes: used only where the model computes the same that way, and the
model handed back in contiguous memory (compression and export read it next)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from exporter.inputs.data import Dataset
from exporter.inputs.prepare import reference_logits
from exporter.models.eager import channels_last
from exporter.models.zoo import MobileNetV2Cifar
from exporter.training.loop import TrainConfig, train


class RawStrides(nn.Module):
    """Flattens through as_strided with the strides of contiguous NCHW memory: right on NCHW,
    silently wrong on channels-last input (the kind of model the probe must catch)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        y = self.conv(x)
        n = y.shape[0]
        flat = y.as_strided((n, 4 * 8 * 8), (4 * 8 * 8, 1))
        return self.fc(flat)


class ViewFlatten(RawStrides):
    """``.view`` needs contiguous memory: raises on channels-last activations."""

    def forward(self, x):
        y = self.conv(x)
        return self.fc(y.view(y.shape[0], -1))


def _images(n: int = 20, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 8, 8)).astype(np.float32)


def _dataset(x: np.ndarray) -> Dataset:
    images = np.zeros((len(x), 8, 8, 3), np.uint8)
    return Dataset(images, np.arange(len(x)) % 10, tuple(str(i) for i in range(10)), "test")


def _plain(module: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("kind", [RawStrides, ViewFlatten])
def test_a_layout_dependent_model_keeps_plain_memory_and_its_own_logits(kind):
    torch.manual_seed(0)
    model = kind().eval()
    x = _images()
    with channels_last(model, torch.from_numpy(x[:1])) as fast:
        assert fast is False
        assert all(p.is_contiguous() for p in model.parameters())
    logits, expected = reference_logits(model, _dataset(x), x), _plain(model, x)
    # Batching alone moves the last bits; the wrong layout moves logits by their span.
    assert np.abs(logits - expected).max() <= 1e-5 * float(expected.max() - expected.min())


def test_a_conv_net_runs_channels_last_and_is_handed_back_contiguous():
    torch.manual_seed(0)
    model = MobileNetV2Cifar(3, (8, 8), 10).eval()
    x = _images(40)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with channels_last(model, torch.from_numpy(x[:1])) as fast:
        assert fast is True
        assert model.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    logits = reference_logits(model, _dataset(x), x)
    for name, value in model.state_dict().items():
        assert value.is_contiguous(), name
        assert torch.equal(value, before[name]), name
    expected = _plain(model, x)
    span = float(expected.max() - expected.min())
    assert np.abs(logits - expected).max() <= 1e-5 * span


def test_parameters_are_contiguous_again_when_the_pass_fails():
    model = MobileNetV2Cifar(3, (8, 8), 10).eval()
    with (
        pytest.raises(RuntimeError, match="stop"),
        channels_last(model, torch.zeros(1, 3, 8, 8)) as fast,
    ):
        assert fast is True
        raise RuntimeError("stop")
    assert all(p.is_contiguous() for p in model.parameters())


def test_a_nested_pass_keeps_the_outer_layout():
    model = MobileNetV2Cifar(3, (8, 8), 10).eval()
    probe = torch.zeros(1, 3, 8, 8)
    with channels_last(model, probe) as outer:
        with channels_last(model, probe) as inner:
            assert outer and inner
        # The inner pass (the training loop's per-epoch predict) left the layout to the outer.
        assert model.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert all(p.is_contiguous() for p in model.parameters())


class TrainOnlyView(RawStrides):
    """Same outputs both ways in eval mode; a train-mode branch needs contiguous memory."""

    def forward(self, x):
        y = self.conv(x)
        if self.training:
            y = y.view(y.shape[0], -1).view_as(y)
        return self.fc(y.flatten(1))


def test_training_uses_plain_memory_where_a_train_step_needs_it():
    model = TrainOnlyView().eval()
    x = torch.from_numpy(_images(4))
    with channels_last(model, x) as fast:
        assert fast is True  # inference alone is fine
    with channels_last(model, x, for_training=True) as fast:
        assert fast is False
    # ... and the training loop runs it, in plain memory, instead of raising mid-epoch.
    train(model, _images(64), np.arange(64) % 10, TrainConfig(epochs=1, batch_size=16))


def test_a_training_step_with_hooks_is_not_tried_on_a_copy():
    model = MobileNetV2Cifar(3, (8, 8), 10).eval()
    seen = []
    model.features[0].register_forward_hook(lambda m, i, o: seen.append(m.training))
    with channels_last(model, torch.zeros(1, 3, 8, 8), for_training=True) as fast:
        assert fast is False
    assert True not in seen  # no train-mode forward reached the hook's state


def test_train_results_do_not_depend_on_a_previous_probe():
    """Training in channels-last memory is repeatable: the probe draws from its own generator."""
    x, y = _images(64), np.arange(64) % 10
    states = []
    for _ in range(2):
        torch.manual_seed(3)
        model = MobileNetV2Cifar(3, (8, 8), 10)
        train(model, x, y, TrainConfig(epochs=1, batch_size=16, seed=5))
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert all(v.is_contiguous() for v in states[0].values())
