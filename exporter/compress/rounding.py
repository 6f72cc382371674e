"""Rounding weights to a grid: w <- round(w / alpha) * alpha (zeros stay zero)."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def round_to_grid(
    weights: dict[str, nn.Parameter], *, step: float | None = None, bits: int | None = None
) -> dict[str, float]:
    """Round each weight tensor in place; return the step used per tensor.

    With ``bits``, each layer gets alpha = max|w| / (2^(bits-1) - 1), a symmetric grid of
    2^bits - 1 levels that covers the layer's range.
    """
    steps: dict[str, float] = {}
    for name, w in weights.items():
        if step is not None:
            alpha = float(step)
        elif bits is not None:
            peak = float(w.abs().max())
            if peak == 0.0:
                continue
            alpha = peak / (2 ** (bits - 1) - 1)
        else:
            continue
        w.copy_(torch.round(w / alpha) * alpha)
        steps[name] = alpha
    return steps
