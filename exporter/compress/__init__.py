"""Compression stage: magnitude pruning (one-shot or gradual with fine-tuning), then rounding."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from torch import nn

from exporter.common.progress import Progress
from exporter.compress.channels import prune_channels
from exporter.compress.prune import (
    MaskSet,
    block_layout,
    cubic_sparsity,
    layer_sparsity,
    magnitude_masks,
    prunable_weights,
    prune_model,
)
from exporter.compress.rounding import round_to_grid
from exporter.errors import DataError, RecipeError
from exporter.recipe import CompressSpec
from exporter.training.loop import TrainConfig, train

# Fraction of fine-tuning over which gradual pruning ramps up; the rest recovers accuracy.
RAMP_FRACTION = 0.7
# Masks are recomputed this many times during the ramp.
RAMP_UPDATES = 20


@dataclass
class CompressionResult:
    method: str
    target_sparsity: float | None
    threshold: float | None
    scope: str
    finetune_epochs: int
    finetune_loss: list[float] = field(default_factory=list)
    rounding: dict[str, float] = field(default_factory=dict)  # weight name -> grid step used
    layers: list[dict] = field(default_factory=list)
    pruned_fraction: float = 0.0  # zeros / prunable weights (excluded layers not counted)
    channels: dict | None = None  # structured pruning: params/MACs before and after

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def compress(
    model: nn.Module,
    spec: CompressSpec,
    train_inputs: np.ndarray | None,
    train_labels: np.ndarray | None,
    *,
    input_shape: tuple[int, int, int] | None = None,
    progress: Progress | None = None,
) -> CompressionResult:
    """Remove channels, prune weights, fine-tune and round ``model`` in place as the recipe says.

    Structured pruning changes the module's parameters, so it runs first; fine-tuning then
    recovers from both kinds of pruning at once.
    """
    prune, ft = spec.prune, spec.finetune
    channel_info = None
    if spec.channels.ratio:
        if input_shape is None:
            raise ValueError("structured pruning needs the input shape")
        ch = spec.channels
        channel_info = prune_channels(
            model,
            input_shape,
            ratio=ch.ratio,
            scope=ch.scope,
            importance=ch.importance,
            round_to=ch.round_to,
        ).to_dict()
    weights = prunable_weights(model, prune.exclude)
    does_prune = prune.sparsity is not None or prune.threshold is not None
    if not weights and (prune.sparsity or prune.threshold):
        raise RecipeError(
            "compress.prune: no layer left to prune: compress.prune.exclude "
            f"[{', '.join(prune.exclude)}] excludes every conv/fully-connected layer of this "
            "model (set compress.prune.sparsity=0, or narrow compress.prune.exclude)"
        )
    wants_ft = ft.epochs > 0
    if wants_ft and (train_inputs is None or len(train_inputs) == 0):
        raise DataError("compress.finetune.epochs > 0 needs training data (--data)")
    gradual = does_prune and wants_ft and prune.schedule == "gradual" and prune.sparsity is not None
    steps = []
    if channel_info:
        steps.append(f"channel pruning {spec.channels.ratio:.0%}")
    if does_prune:
        steps.append("gradual magnitude" if gradual else "one-shot magnitude")
    if wants_ft and steps:
        steps.append("fine-tune")
    method = " + ".join(steps) or "none"
    result = CompressionResult(
        method, prune.sparsity, prune.threshold, prune.scope, ft.epochs, channels=channel_info
    )

    # FC blocks follow the exported TFLite weight layout (see prune.py).
    layout = block_layout(model, prune.block, input_shape) if does_prune else None
    masks: MaskSet | None = None
    if does_prune and not gradual:
        masks = prune_model(
            model,
            sparsity=prune.sparsity,
            threshold=prune.threshold,
            scope=prune.scope,
            exclude=prune.exclude,
            layout=layout,
        )
    if wants_ft:
        result.finetune_loss = _finetune(
            model, spec, weights, masks, layout, gradual, train_inputs, train_labels, progress
        )
    # Every conv / FC weight: prune.exclude keeps layers dense, it does not exempt them from the
    # grid the recipe asks for.
    result.rounding = round_to_grid(
        prunable_weights(model), step=spec.round.step, bits=spec.round.bits
    )
    result.layers = layer_sparsity(model)
    total = sum(w.numel() for w in weights.values())
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    result.pruned_fraction = zeros / max(1, total)
    return result


def _finetune(
    model: nn.Module,
    spec: CompressSpec,
    weights: dict,
    masks: MaskSet | None,
    layout,
    gradual: bool,
    train_inputs: np.ndarray,
    train_labels: np.ndarray,
    progress: Progress | None,
) -> list[float]:
    """Fine-tune with the pruning masks held (gradual: ramped up during the first steps)."""
    prune, ft = spec.prune, spec.finetune
    state = {"masks": masks}
    hook = None
    if gradual:

        def hook(step: int, total: int) -> None:
            end = max(1, int(total * RAMP_FRACTION))
            every = max(1, end // RAMP_UPDATES)
            if step % every == 0 or step == end:
                s = cubic_sparsity(min(step + every, end), prune.sparsity, end)
                new = magnitude_masks(
                    {n: p.detach() for n, p in weights.items()},
                    sparsity=s,
                    scope=prune.scope,
                    layout=layout,
                )
                state["masks"] = MaskSet(weights, new)
                state["masks"].apply()

    def after() -> None:
        if state["masks"] is not None:
            state["masks"].apply()

    cfg = TrainConfig.finetuning(ft, ft.epochs, ft.lr)
    losses = train(
        model,
        train_inputs,
        train_labels,
        cfg,
        step_hook=hook,
        after_step=after,
        progress=progress,
        label="fine-tune",
        lr_option="compress.finetune.lr",
    )
    if gradual:
        # The final masks must be exactly at the target, whatever the step count was.
        prune_model(
            model,
            sparsity=prune.sparsity,
            scope=prune.scope,
            exclude=prune.exclude,
            layout=layout,
        )
    return losses
