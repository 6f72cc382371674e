"""The training loop's per-epoch draw (`compress.finetune.samples`): an epoch sees that many
distinct training images, a fresh draw each epoch, and 0 trains on all of them as before."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from exporter.training.loop import TrainConfig, train


class _Recorder(nn.Module):
    """A linear classifier that records which training images it was given: image i is filled
    with the value i, so the first pixel names it (probe images are random, never integers)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 4 * 4, 3)
        self.seen: list[list[int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = x[:, 0, 0, 0].detach()
        if self.training and torch.equal(first, first.round()):
            self.seen.append([int(v) for v in first])
        return self.fc(x.reshape(len(x), -1))


def _data(n: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.repeat(np.arange(n, dtype=np.float32), 3 * 4 * 4).reshape(n, 3, 4, 4)
    return x, (np.arange(n) % 3).astype(np.int64)


def _epochs(model: _Recorder, per_epoch: int) -> list[list[int]]:
    flat = [i for batch in model.seen for i in batch]
    assert len(flat) == per_epoch * (len(flat) // per_epoch)
    return [flat[k : k + per_epoch] for k in range(0, len(flat), per_epoch)]


def test_each_epoch_draws_that_many_distinct_images_afresh():
    x, y = _data(100)
    model = _Recorder()
    steps = []
    cfg = TrainConfig(epochs=3, batch_size=8, samples_per_epoch=30)
    train(model, x, y, cfg, step_hook=lambda step, total: steps.append(total))
    assert steps[0] == 3 * 4  # ceil(30 / 8) batches an epoch
    epochs = _epochs(model, 30)
    assert len(epochs) == 3
    assert all(len(set(e)) == 30 and set(e) <= set(range(100)) for e in epochs)
    assert len({tuple(sorted(e)) for e in epochs}) == 3  # not the same 30 images each time


def test_zero_or_more_than_the_data_trains_on_everything_exactly_as_before():
    x, y = _data(50)
    weights = []
    for samples in (0, 50, 10_000):
        torch.manual_seed(1)
        model = _Recorder()
        train(model, x, y, TrainConfig(epochs=2, batch_size=8, samples_per_epoch=samples))
        assert all(sorted(e) == list(range(50)) for e in _epochs(model, 50))
        weights.append(model.fc.weight.detach().clone())
    assert torch.equal(weights[0], weights[1]) and torch.equal(weights[0], weights[2])
