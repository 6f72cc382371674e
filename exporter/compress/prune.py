"""Unstructured magnitude pruning by |w|: by target sparsity or threshold, per layer or global.

Only the weights of Conv and Linear layers are pruned; biases and BatchNorm are left alone.
Ranking is on the absolute value, so large negative weights survive.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from exporter.errors import RecipeError


@dataclass
class MaskSet:
    """Boolean keep-masks for named weights; re-applied after every optimiser step."""

    params: dict[str, nn.Parameter]
    masks: dict[str, torch.Tensor]

    @torch.no_grad()
    def apply(self) -> None:
        for name, mask in self.masks.items():
            self.params[name].mul_(mask)


def _weight_params(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Conv and Linear weights in definition order.

    Found by parameter rather than module type, so a ``torch.export`` program (whose submodules
    are generic) prunes the same as the eager model: a ``.weight`` of rank >= 2 is a conv
    (rank 3-5) or fully-connected (rank 2) kernel; BatchNorm scales and biases are rank 1.
    """
    return [(n, p) for n, p in model.named_parameters()
            if n.endswith("weight") and p.dim() >= 2]


def prunable_weights(model: nn.Module, exclude: list[str] | tuple[str, ...] = ()) -> dict[str, nn.Parameter]:
    """Weights of Conv/Linear layers in definition order, minus the excluded layers.

    ``exclude`` holds layer names (module paths), or the tokens ``first_conv`` / ``last_fc``.
    """
    params = _weight_params(model)
    layer = {n: n[: -len(".weight")] for n, _ in params}
    convs = [n for n, p in params if p.dim() > 2]
    fcs = [n for n, p in params if p.dim() == 2]
    skip: set[str] = set()
    for token in exclude:
        if token == "first_conv":
            skip.update(convs[:1])
        elif token == "last_fc":
            skip.update(fcs[-1:])
        elif token in layer.values():
            skip.update(n for n, lay in layer.items() if lay == token)
        else:
            raise RecipeError(f"compress.prune.exclude: no prunable layer named '{token}' "
                              f"(layers: {', '.join(sorted(layer.values()))})")
    return {n: p for n, p in params if n not in skip}


def _smallest_k_mask(magnitudes: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-mask zeroing exactly the k smallest entries (ties broken by position)."""
    keep = torch.ones(magnitudes.numel(), dtype=torch.bool)
    if k > 0:
        order = torch.argsort(magnitudes.flatten(), stable=True)
        keep[order[:k]] = False
    return keep.view_as(magnitudes)


@torch.no_grad()
def magnitude_masks(weights: dict[str, torch.Tensor], *, sparsity: float | None = None,
                    threshold: float | None = None, scope: str = "global") -> dict[str, torch.Tensor]:
    """Keep-masks (True = keep) from |w|.

    With ``sparsity``, exactly round(sparsity * n) weights are zeroed, over all layers together
    (``global``) or in each layer (``layer``). With ``threshold``, every |w| < threshold is zeroed.
    """
    if threshold is not None:
        return {n: w.abs() >= threshold for n, w in weights.items()}
    if sparsity is None:
        return {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    if scope == "layer":
        return {n: _smallest_k_mask(w.abs(), round(sparsity * w.numel()))
                for n, w in weights.items()}
    flat = torch.cat([w.abs().flatten() for w in weights.values()])
    keep = _smallest_k_mask(flat, round(sparsity * flat.numel()))
    masks, start = {}, 0
    for n, w in weights.items():
        masks[n] = keep[start:start + w.numel()].view_as(w)
        start += w.numel()
    return masks


def prune_model(model: nn.Module, *, sparsity: float | None = None, threshold: float | None = None,
                scope: str = "global", exclude: list[str] | tuple[str, ...] = ()) -> MaskSet:
    """Zero weights in place and return the masks that keep them zero."""
    weights = prunable_weights(model, exclude)
    masks = magnitude_masks({n: p.detach() for n, p in weights.items()},
                            sparsity=sparsity, threshold=threshold, scope=scope)
    mask_set = MaskSet(weights, masks)
    mask_set.apply()
    return mask_set


def cubic_sparsity(step: int, final: float, end_step: int, initial: float = 0.0) -> float:
    """Zhu & Gupta (2017): s_t = s_f + (s_i - s_f) * (1 - t / n)^3, held at s_f after n steps."""
    if end_step <= 0 or step >= end_step:
        return final
    frac = 1.0 - step / end_step
    return final + (initial - final) * frac**3


def layer_sparsity(model: nn.Module) -> list[dict]:
    """Per prunable layer: name, kind, weight count, zeros and sparsity."""
    rows = []
    for name, p in _weight_params(model):
        w = p.detach()
        zeros = int((w == 0).sum())
        rows.append({"name": name[: -len(".weight")], "kind": "Linear" if w.dim() == 2 else "Conv",
                     "params": int(w.numel()), "zeros": zeros,
                     "sparsity": zeros / max(1, w.numel())})
    return rows
