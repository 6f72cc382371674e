"""Train a model on a data set and write its weights: ``edgepack train`` and ``exporter.train``.

The weights are validated on the same seeded hold-out split that ``edgepack run`` uses (same
``holdout`` and ``seed``), so a model trained here is never scored on images it learned from.
Beside the state_dict goes a JSON record (``<weights>.json``) with the normalization the model
was trained with; ``edgepack run`` reads it back, so the exported model sees the same inputs.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from exporter.common.atomic import atomic_path, check_writable
from exporter.common.out_path import check_out_path
from exporter.common.output_lock import output_lock
from exporter.common.progress import make_progress
from exporter.errors import EdgepackError, ModelLoadError
from exporter.inputs.data import channel_stats, check_fits
from exporter.inputs.paths import input_paths
from exporter.inputs.prepare import build_torch_model, check_model_output, sidecar_path, split_data
from exporter.recipe import EvalSpec
from exporter.training.loop import TrainConfig, accuracy, predict, train


class TrainOptionError(EdgepackError):
    """A training option is out of range (the CLI's own checks catch these before)."""


class UntrainableModelError(ModelLoadError):
    """The model has no PyTorch module to train (an ONNX file)."""


@dataclass(frozen=True)
class TrainOptions:
    model: str
    out: Path
    data: str = "digits"
    eval_data: str | None = None
    epochs: int = 15
    lr: float = 0.05
    batch_size: int = 64
    augment: bool = False  # random crop + horizontal flip, for natural images
    holdout: float = 0.2  # must match the recipe of the later `edgepack run`
    seed: int = 0
    force: bool = False
    quiet: bool = False

    def __post_init__(self) -> None:
        # The same ranges as the CLI's click types, for callers of the Python API.
        if self.epochs < 1:
            raise TrainOptionError(f"epochs must be at least 1, got {self.epochs}")
        if not self.lr > 0:
            raise TrainOptionError(f"lr must be > 0, got {self.lr}")
        if self.batch_size < 1:
            raise TrainOptionError(f"batch_size must be at least 1, got {self.batch_size}")
        if not 0 < self.holdout < 1:
            raise TrainOptionError(
                f"holdout must be between 0 and 1 (exclusive), got {self.holdout}"
            )
        if self.seed < 0:
            raise TrainOptionError(f"seed must be >= 0, got {self.seed}")


@dataclass
class TrainResult:
    weights: Path  # the state_dict, loadable with torch.load(weights_only=True)
    record: Path  # <weights>.json: normalization, classes and scores; read by `edgepack run`
    eval_accuracy: float  # top-1 %, on the hold-out (or --eval-data) images
    eval_images: int
    eval_note: str  # where the eval images came from
    losses: list[float] = field(default_factory=list)  # mean training loss of each epoch


def train_model(opts: TrainOptions) -> TrainResult:
    """Train ``opts.model`` on ``opts.data`` and write its weights and record atomically."""
    out = Path(opts.out)
    record_path = sidecar_path(out)
    # An output over an input (--out the data file) is refused before any work, and one
    # process at a time writes these weights.
    inputs = input_paths(opts.model, opts.data, opts.eval_data)
    check_out_path(out, inputs)
    check_out_path(record_path, inputs)
    with output_lock(out):
        return _train_model(opts, out, record_path)


def _train_model(opts: TrainOptions, out: Path, record_path: Path) -> TrainResult:
    # Refused before any work, so an existing output costs no training time.
    check_writable(out, opts.force)
    check_writable(record_path, opts.force)
    full, splits = split_data(
        opts.data, opts.eval_data, EvalSpec(samples=10**9, holdout=opts.holdout, seed=opts.seed)
    )
    norm = channel_stats(full)
    # The initial weights follow --seed too: same options, same trained weights.
    module = build_torch_model(opts.model, None, full, seed=opts.seed).module
    if module is None:
        raise UntrainableModelError("an ONNX model cannot be trained")
    classes = check_model_output(module, splits.train, norm)
    check_fits(splits.train, full.image_shape, classes)
    check_fits(splits.eval, full.image_shape, classes)
    cfg = TrainConfig(
        epochs=opts.epochs,
        lr=opts.lr,
        batch_size=opts.batch_size,
        seed=opts.seed,
        augment=opts.augment,
    )
    with make_progress(opts.quiet) as progress:
        losses = train(
            module,
            norm.apply(splits.train.images),
            splits.train.labels,
            cfg,
            progress=progress,
            label="train",
        )
    acc = accuracy(predict(module, norm.apply(splits.eval.images)), splits.eval.labels)
    # Serialized in memory first: torch.save writing to a full disk fails with a RuntimeError
    # from its zip writer, while a plain write fails with OSError(ENOSPC), which atomic_path
    # turns into a one-line error.
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    with atomic_path(out, force=opts.force) as tmp:
        tmp.write_bytes(buf.getvalue())
    with atomic_path(record_path, force=opts.force) as tmp:
        tmp.write_text(
            json.dumps(
                {
                    "model": opts.model,
                    "data": opts.data,
                    "mean": list(norm.mean),
                    "std": list(norm.std),
                    "classes": list(full.classes),
                    "epochs": opts.epochs,
                    "final_loss": losses[-1],
                    "eval_accuracy": acc,
                    "eval": splits.eval_note,
                },
                indent=2,
            )
        )
    return TrainResult(
        weights=out,
        record=record_path,
        eval_accuracy=acc,
        eval_images=len(splits.eval),
        eval_note=splits.eval_note,
        losses=losses,
    )
