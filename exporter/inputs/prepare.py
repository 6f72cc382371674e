"""Inputs of a run, resolved and checked: model, data splits, normalization, eval batch."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from exporter.errors import DataError, ModelLoadError
from exporter.inputs.data import Dataset, Normalization, channel_stats, load_data, stratified_split
from exporter.models import LoadedModel, load_model, load_weights, set_mode
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
        evald = load_data(eval_spec)
        splits = Splits(full, evald, f"--eval-data {eval_spec}")
    else:
        train, hold = stratified_split(full, ev.holdout, ev.seed)
        splits = Splits(
            train,
            hold,
            f"no --eval-data: stratified hold-out of {ev.holdout:.0%} "
            f"of {data_spec} (seed {ev.seed}); trained on the rest",
        )
    if len(splits.eval) > ev.samples:
        rng = np.random.default_rng(ev.seed)
        idx = np.sort(rng.choice(len(splits.eval), ev.samples, replace=False))
        splits.eval = splits.eval.subset(idx, splits.eval.source)
        splits.eval_note += f"; {ev.samples} images sampled for validation"
    return full, splits


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
    if mean or std:
        if not (mean and std) or len(mean) != len(std) or len(mean) not in (1, channels):
            raise DataError(f"--mean and --std need 1 or {channels} values each")
        if any(s <= 0 for s in std):
            raise DataError("--std values must be > 0")
        return Normalization(
            tuple(mean) * (channels // len(mean)),
            tuple(std) * (channels // len(std)),
            "user (--mean/--std)",
        )
    if weights and sidecar_path(weights).is_file():
        try:
            meta = json.loads(sidecar_path(weights).read_text())
            return Normalization(
                tuple(meta["mean"]),
                tuple(meta["std"]),
                f"recorded at training in {sidecar_path(weights).name}",
            )
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{sidecar_path(weights)}: unreadable training record") from None
    return channel_stats(full)


def build_torch_model(model_spec: str, weights: str | None, ds: Dataset) -> LoadedModel:
    c, h, w = ds.image_shape
    loaded = load_model(model_spec, c, (h, w), len(ds.classes))
    if loaded.module is not None:
        if weights:
            load_weights(loaded.module, weights)
        set_mode(loaded.module, training=False)
    return loaded


@torch.no_grad()
def check_model_output(module: nn.Module, ds: Dataset, norm: Normalization) -> int:
    """Run one image; the output must be [1, K] logits with every label < K. Returns K."""
    x = torch.from_numpy(norm.apply(ds.images[:1]))
    try:
        out = module(x)
    except Exception as exc:  # the user's model rejected the input
        c, h, w = ds.image_shape
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"the model does not accept {c}x{h}x{w} images from {ds.source}: {first}"
        ) from None
    if isinstance(out, (tuple, list)):
        raise ModelLoadError(
            f"the model returns a {type(out).__name__}; expected one tensor "
            "of class logits [N, classes]"
        )
    if out.ndim != 2 or out.shape[0] != 1:
        raise ModelLoadError(
            f"the model's output has shape {list(out.shape)}; expected class logits [N, classes]"
        )
    return int(out.shape[1])
