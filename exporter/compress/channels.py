"""Structured channel pruning: physically remove whole channels, so the network is smaller
and faster as a dense model on every runtime.

Torch-Pruning (the maintained library for this, Fang et al., CVPR 2023) traces the model into
a dependency graph, so channels coupled through residual Add, Concat, depthwise convolutions
and BatchNorm are removed together; we only pick the importance criterion and ratios.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from exporter.errors import ModelLoadError
from exporter.models.complexity import count_params_macs
from exporter.models.loading import set_mode


@dataclass
class ChannelPruneResult:
    ratio: float
    scope: str
    importance: str
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    channels: list[dict]  # per conv/linear: name, out channels before/after

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _importance(name: str):
    import torch_pruning as tp

    if name == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if name == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    return tp.importance.BNScaleImportance()  # "bn": BatchNorm gamma, Liu et al. 2017


def prune_channels(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    *,
    ratio: float,
    scope: str = "global",
    importance: str = "l1",
    round_to: int | None = 8,
    max_layer_ratio: float = 0.9,
) -> ChannelPruneResult:
    """Remove ``ratio`` of the prunable channels in place; the classifier output is kept."""
    import torch_pruning as tp

    example = torch.zeros(1, *input_shape)
    params0, macs0 = count_params_macs(model, input_shape)
    before = {
        n: m.weight.shape[0]
        for n, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    }
    # The layer that produces the logits keeps its outputs: they are the classes.
    last = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
    try:
        pruner = tp.pruner.MetaPruner(
            model,
            example,
            importance=_importance(importance),
            pruning_ratio=ratio,
            global_pruning=scope == "global",
            max_pruning_ratio=max_layer_ratio,
            ignored_layers=[last],
            round_to=round_to,
        )
        pruner.step()
    except Exception as exc:  # tracing a user model can fail in many ways
        raise ModelLoadError(
            f"structured pruning could not trace the model: {type(exc).__name__}: {exc}"
        ) from None
    set_mode(model, training=False)
    params1, macs1 = count_params_macs(model, input_shape)
    channels = [
        {"name": n, "before": before[n], "after": m.weight.shape[0]}
        for n, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear)) and n in before
    ]
    return ChannelPruneResult(ratio, scope, importance, params0, params1, macs0, macs1, channels)
