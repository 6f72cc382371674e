"""Inputs of a run, resolved and checked: model, data splits, normalization, eval batch."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from exporter.errors import DataError, ModelLoadError
from exporter.inputs.data import (
    Dataset,
    Normalization,
    channel_stats,
    format_classes,
    load_data,
    stratified_split,
)
from exporter.models import LoadedModel, load_model, load_weights, set_mode
from exporter.models.eager import as_channels_last, channels_last, images_per_pass
from exporter.recipe import EvalSpec


@dataclass
class Splits:
    train: Dataset
    eval: Dataset
    eval_note: str  # where the eval images came from, for the report


def split_data(data_spec: str, eval_spec: str | None, ev: EvalSpec) -> tuple[Dataset, Splits]:
    """Load --data (and --eval-data, or hold out a seeded stratified split of --data)."""
    full = load_data(data_spec)
    if eval_spec:
        evald, matched = match_classes(full, load_data(eval_spec))
        splits = Splits(full, evald, f"--eval-data {eval_spec}{matched}")
    else:
        train, hold = stratified_split(full, ev.holdout, ev.seed)
        splits = Splits(
            train,
            hold,
            f"no --eval-data: stratified hold-out of {ev.holdout:.0%} "
            f"of {data_spec} (seed {ev.seed}); trained on the rest",
        )
    idx = eval_sample(len(splits.eval), ev)
    if idx is not None:
        splits.eval = splits.eval.subset(idx, splits.eval.source)
        splits.eval_note += f"; {ev.samples} images sampled for validation"
    return full, splits


def eval_sample(n: int, ev: EvalSpec) -> np.ndarray | None:
    """The indices of the eval images a run validates on, among ``n``: a seeded sample of
    eval.samples of them, or None when it validates on all ``n``."""
    if n <= ev.samples:
        return None
    rng = np.random.default_rng(ev.seed)
    return np.sort(rng.choice(n, ev.samples, replace=False))


def match_classes(train: Dataset, evald: Dataset) -> tuple[Dataset, str]:
    """Eval labels in the training data's class indices, matched by class name.

    Eval classes that are all training classes (fewer, or in another order) are remapped by name;
    an eval class the training data lacks is refused. Data with integer labels only is matched by
    index. Returns the eval data and a note for the report ("" when nothing was remapped).
    """
    if not (train.named_classes and evald.named_classes) or evald.classes == train.classes:
        return evald, ""
    index = {name: i for i, name in enumerate(train.classes)}
    unknown = [c for c in evald.classes if c not in index]
    if unknown:
        verb = "is not a training class" if len(unknown) == 1 else "are not training classes"
        raise DataError(
            f"eval data has classes {format_classes(evald.classes)}; training data "
            f"{format_classes(train.classes)}: {', '.join(unknown)} {verb} "
            f"({evald.source} vs {train.source})"
        )
    lookup = np.array([index[c] for c in evald.classes], np.int64)
    remapped = Dataset(evald.images, lookup[evald.labels], train.classes, evald.source)
    absent = [c for c in train.classes if c not in set(evald.classes)]
    note = "; eval classes matched to the training classes by name"
    if absent:
        note += f" (no eval images of class {', '.join(absent)})"
    return remapped, note


def sidecar_path(weights: str | Path) -> Path:
    return Path(str(weights) + ".json")


def resolve_normalization(
    full: Dataset,
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
    weights: str | None,
) -> Normalization:
    """--mean/--std, else what `edgepack train` recorded beside the weights, else data stats."""
    channels = full.image_shape[0]
    # The training record is checked even when --mean/--std replace its normalization: its
    # classes say what the weights' outputs mean.
    recorded = _training_record(weights, full) if weights else None
    if mean or std:
        if not (mean and std):
            raise DataError("--mean and --std go together: give both")
        return Normalization(
            _norm_values(mean, "--mean", channels, positive=False),
            _norm_values(std, "--std", channels, positive=True),
            "user (--mean/--std)",
        )
    if recorded is not None:
        return recorded
    stats = channel_stats(full)
    # The source starts "statistics of": the report and the run warn on that prefix.
    why = (
        f"no --mean/--std and no training record {sidecar_path(weights).name} beside the weights"
        if weights
        else "no --mean/--std and no --weights with a training record"
    )
    return Normalization(stats.mean, stats.std, f"{stats.source} ({why})")


def build_torch_model(
    model_spec: str, weights: str | None, ds: Dataset, seed: int = 0
) -> LoadedModel:
    """The model of ``model_spec`` sized for ``ds``, its initial weights from ``seed`` (then
    ``weights`` loaded, if given), in eval mode."""
    c, h, w = ds.image_shape
    loaded = load_model(model_spec, c, (h, w), len(ds.classes), seed)
    if loaded.module is not None:
        if weights:
            load_weights(loaded.module, weights)
        set_mode(loaded.module, training=False)
    return loaded


def _checked_forward(
    module: nn.Module, x: np.ndarray, ds: Dataset, fast: bool = False
) -> torch.Tensor:
    """One forward pass on a batch of ``ds``'s images (in channels-last memory when ``fast``);
    the output must be [N, K] logits."""
    try:
        out = module(as_channels_last(torch.from_numpy(x), fast))
    except Exception as exc:  # the user's model rejected the input
        c, h, w = ds.image_shape
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"the model does not accept {c}x{h}x{w} images from {ds.source}: {first}"
        ) from None
    if not isinstance(out, torch.Tensor):
        raise ModelLoadError(
            f"the model returns a {type(out).__name__}; expected one tensor "
            "of class logits [N, classes]"
        )
    if out.ndim != 2 or out.shape[0] != len(x):
        raise ModelLoadError(
            f"the model's output has shape {list(out.shape)}; expected class logits [N, classes]"
        )
    return out


@torch.no_grad()
def check_model_output(module: nn.Module, ds: Dataset, norm: Normalization) -> int:
    """Run one image; the output must be [1, K] logits with every label < K. Returns K."""
    return int(_checked_forward(module, norm.apply(ds.images[:1]), ds).shape[1])


@torch.no_grad()
def reference_logits(module: nn.Module, ds: Dataset, x: np.ndarray) -> np.ndarray:
    """The original model's float32 logits on ``x`` (``ds``'s images, normalized), each image
    forwarded once: the first image, alone, is also check_model_output's check (same errors),
    so no image goes through the model twice; the rest in channels-last memory where the
    model computes the same that way (models.eager)."""
    if not len(x):
        raise DataError(f"{ds.source}: no eval images")
    set_mode(module, training=False)
    step = images_per_pass(x)
    first = _checked_forward(module, x[:1], ds)
    with channels_last(module, torch.from_numpy(x[:1])) as fast:
        rest = [
            _checked_forward(module, x[a : a + step], ds, fast).float().numpy()
            for a in range(1, len(x), step)
        ]
    return np.concatenate([first.float().numpy(), *rest])


def _training_record(weights: str, full: Dataset) -> Normalization | None:
    """The normalization `edgepack train` recorded beside the weights, after checking that the
    record is whole and that its classes are those of --data; None without a record."""
    path = sidecar_path(weights)
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except (ValueError, OSError) as exc:
        raise DataError(f"{path}: unreadable training record ({exc})") from None
    if not isinstance(meta, dict) or "mean" not in meta or "std" not in meta:
        raise DataError(f"{path}: unreadable training record (needs 'mean' and 'std')")
    channels = full.image_shape[0]
    mean = _norm_values(meta["mean"], f"{path}: mean", channels, positive=False)
    std = _norm_values(meta["std"], f"{path}: std", channels, positive=True)
    classes = meta.get("classes")
    if classes is not None:
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise DataError(f"{path}: classes must be a list of names, got {classes!r}")
        if full.named_classes and tuple(classes) != full.classes:
            raise DataError(
                f"{path}: the weights were trained on classes {format_classes(classes)}; "
                f"--data has {format_classes(full.classes)} ({full.source})"
            )
    return Normalization(mean, std, f"recorded at training in {path.name}")


def _norm_values(values: object, where: str, channels: int, positive: bool) -> tuple[float, ...]:
    """1 or ``channels`` finite numbers (> 0 for a std), as one per channel."""
    if not isinstance(values, (list, tuple)) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
    ):
        raise DataError(f"{where} must be a list of numbers, got {values!r}")
    if len(values) not in (1, channels):
        raise DataError(
            f"{where} has {len(values)} values for {channels}-channel images "
            f"(needs 1 or {channels})"
        )
    if not all(math.isfinite(v) for v in values):
        raise DataError(f"{where} values must be finite numbers, got {list(values)}")
    if positive and any(v <= 0 for v in values):
        raise DataError(f"{where} values must be > 0, got {list(values)}")
    return tuple(float(v) for v in values) * (channels // len(values))
