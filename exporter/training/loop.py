"""A plain supervised training loop, used for training from scratch and for fine-tuning.

Seeded (same inputs -> same weights), SGD with momentum and a cosine learning-rate schedule,
optional crop/flip augmentation for natural images, and a hook called before every step so
gradual pruning can tighten its masks.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from exporter.common.progress import Progress
from exporter.errors import EdgepackError
from exporter.models.eager import as_channels_last, channels_last, images_per_pass
from exporter.models.loading import set_mode
from exporter.recipe import FinetuneSpec


class TrainingDivergedError(EdgepackError):
    """The loss or the weights became NaN/Inf: what training produced is no model."""


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    lr: float = 0.01
    batch_size: int = 64
    seed: int = 0
    weight_decay: float = 5e-4
    augment: bool = False  # random crop (pad 4) + horizontal flip
    # Images an epoch draws (a fresh seeded draw each epoch, without repeats); 0 or more than
    # the data: all of them.
    samples_per_epoch: int = 0

    @classmethod
    def finetuning(cls, ft: FinetuneSpec, epochs: int, lr: float) -> TrainConfig:
        """A recipe's [compress.finetune] batch, seed, augmentation and per-epoch draw, with
        the epochs and rate of the pass that uses them (fine-tuning or QAT)."""
        return cls(epochs=epochs, lr=lr, batch_size=ft.batch_size, seed=ft.seed,
                   augment=ft.augment, samples_per_epoch=ft.samples)  # fmt: skip


#: Called as ``observer(epoch, epochs, model)`` after every epoch of every :func:`train` in
#: this context; ``edgepack tune`` sets it to stop a hopeless trial's fine-tuning early (an
#: exception it raises ends training). The model is in eval mode during the call.
EPOCH_OBSERVER: ContextVar[Callable[[int, int, nn.Module], None] | None] = ContextVar(
    "epoch_observer", default=None
)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    padded = F.pad(x, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (n,), generator=gen)
    dx = torch.randint(0, 9, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(n, x.shape[1], h, w + 8)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(n, x.shape[1], h, w)
    return out.gather(3, cols)


def train(
    model: nn.Module,
    inputs: np.ndarray,
    labels: np.ndarray,
    cfg: TrainConfig,
    *,
    step_hook: Callable[[int, int], None] | None = None,
    after_step: Callable[[], None] | None = None,
    progress: Progress | None = None,
    label: str = "training",
    lr_option: str = "--lr",
) -> list[float]:
    """Train in place on float32 NCHW ``inputs``; return the mean loss of each epoch.

    A loss or weight that is not finite raises :class:`TrainingDivergedError` (naming
    ``lr_option``, the setting to lower): NaN weights would otherwise be saved or exported
    as if they were a model.
    """
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    x_all = torch.from_numpy(inputs)
    y_all = torch.from_numpy(labels.astype(np.int64))
    n = len(y_all)
    drawn = min(n, cfg.samples_per_epoch) if cfg.samples_per_epoch > 0 else n
    per_epoch = max(1, (drawn + cfg.batch_size - 1) // cfg.batch_size)
    total = per_epoch * cfg.epochs
    opt = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay
    )
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, total))
    # Channels-last where the model computes the same on it (probed in eval mode, so no
    # BatchNorm statistic moves, and a training step on a copy): oneDNN trains convolutions
    # ~1.5-2x faster that way here. Dropout on 4-D activations then draws other masks than on
    # plain memory: other, equally random, trained weights, the same on every run.
    set_mode(model, training=False)
    with channels_last(model, x_all[:1], for_training=True) as fast:
        set_mode(model, training=True)
        history: list[float] = []
        step = 0
        task = progress.add_task(label, total=total) if progress else None
        for epoch in range(cfg.epochs):
            order = torch.randperm(n, generator=gen)[:drawn]
            running = 0.0
            for b in range(per_epoch):
                idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
                x, y = x_all[idx], y_all[idx]
                if cfg.augment:
                    x = _augment(x, gen)
                x = as_channels_last(x, fast)
                if step_hook:
                    step_hook(step, total)
                loss = F.cross_entropy(model(x), y)
                if not torch.isfinite(loss):
                    raise _non_finite_loss(label, loss.item(), step, epoch, b, cfg, lr_option)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                if after_step:
                    after_step()
                running += loss.item()
                step += 1
                if progress:
                    progress.update(
                        task,
                        advance=1,
                        description=f"{label} epoch {epoch + 1}/{cfg.epochs} "
                        f"loss {running / (b + 1):.3f}",
                    )
            history.append(running / per_epoch)
            observer = EPOCH_OBSERVER.get()
            if observer is not None:
                set_mode(model, training=False)
                observer(epoch, cfg.epochs, model)
                set_mode(model, training=True)
    bad = [n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        what = f"weights {', '.join(bad)} became not finite"
        raise _diverged(label, what, cfg.epochs - 1, per_epoch - 1, cfg, lr_option)
    set_mode(model, training=False)
    return history


def _non_finite_loss(
    label: str, loss: float, step: int, epoch: int, batch: int, cfg: TrainConfig, lr_option: str
) -> TrainingDivergedError:
    if step == 0:  # before any update: the model itself computes NaN/Inf, not the optimiser
        return TrainingDivergedError(
            f"{label}: the loss is {loss} (not finite) before any update: the model computes "
            "NaN or Inf on the training images"
        )
    return _diverged(label, f"the loss became {loss} (not finite)", epoch, batch, cfg, lr_option)


def _diverged(
    label: str, what: str, epoch: int, batch: int, cfg: TrainConfig, lr_option: str
) -> TrainingDivergedError:
    return TrainingDivergedError(
        f"{label} diverged: {what} at epoch {epoch + 1}, batch {batch + 1}; "
        f"the learning rate {cfg.lr:g} is too high for this model (lower {lr_option})"
    )


@torch.no_grad()
def predict(model: nn.Module, inputs: np.ndarray) -> np.ndarray:
    """Logits for float32 NCHW inputs, in eval mode (channels-last where the model computes the
    same that way, a bounded number of images a pass: models.eager)."""
    set_mode(model, training=False)
    if not len(inputs):
        return np.zeros((0, 0), np.float32)
    step = images_per_pass(inputs)
    with channels_last(model, torch.from_numpy(inputs[:1])) as fast:
        outs = [
            model(as_channels_last(torch.from_numpy(inputs[i : i + step]), fast)).float().numpy()
            for i in range(0, len(inputs), step)
        ]
    return np.concatenate(outs)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent."""
    return float((logits.argmax(1) == labels).mean() * 100.0)
