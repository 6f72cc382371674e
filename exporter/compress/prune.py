"""Magnitude pruning by |w|: by target sparsity or threshold, per layer or global.

Only the weights of Conv and Linear layers are pruned; biases and BatchNorm are left alone.
Ranking is on the absolute value, so large negative weights survive.

Block pruning (``block=(r, c)``, not (1, 1)): fully-connected weights are pruned in whole
r x c blocks ranked by their mean |w| (L1 norm / size, so blocks and single conv weights rank
on one scale under ``global``), because TFLite's sparse FULLY_CONNECTED kernels skip only whole
1x4 (float32) or 1x16 (int8) blocks. The blocks are taken in the layout the exported TFLite
weight has: a Linear fed by the flatten of an NCHW map has its columns in NHWC order there
(the converter permutes them to avoid a TRANSPOSE), so :func:`fc_column_orders` finds that
order with one traced forward pass. Conv weights, and FC weights whose shape the block does
not divide, stay unstructured.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    return [(n, p) for n, p in model.named_parameters() if n.endswith("weight") and p.dim() >= 2]


def prunable_weights(
    model: nn.Module, exclude: list[str] | tuple[str, ...] = ()
) -> dict[str, nn.Parameter]:
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
            raise RecipeError(
                f"compress.prune.exclude: no prunable layer named '{token}' "
                f"(layers: {', '.join(sorted(layer.values()))})"
            )
    return {n: p for n, p in params if n not in skip}


@dataclass(frozen=True)
class BlockLayout:
    """Block shape for FC weights and, per weight name, the TFLite column order (a permutation
    of the torch columns; absent = the torch order)."""

    block: tuple[int, int] = (1, 1)
    orders: dict[str, torch.Tensor] = field(default_factory=dict)

    def applies(self, name: str, w: torch.Tensor) -> bool:
        r, c = self.block
        return (r, c) != (1, 1) and w.dim() == 2 and w.shape[0] % r == 0 and w.shape[1] % c == 0


@torch.no_grad()
def fc_column_orders(
    model: nn.Module, input_shape: tuple[int, int, int]
) -> dict[str, torch.Tensor]:
    """For each Linear fed by the flatten of an [N, C, H, W] map (H * W > 1): its columns in
    the NHWC order the TFLite weight has. Found by one batch-1 forward pass with hooks: the
    last 4-D activation before the Linear with C * H * W == in_features is taken as its source.
    """
    last4d: list[torch.Size] = []
    orders: dict[str, torch.Tensor] = {}
    handles = []

    def record(_m: nn.Module, _inp: object, out: object) -> None:
        if isinstance(out, torch.Tensor) and out.dim() == 4:
            last4d.append(out.shape)

    def linear_hook(name: str):
        def hook(m: nn.Module, _inp: object) -> None:
            src = next((s for s in reversed(last4d) if s[1] * s[2] * s[3] == m.in_features), None)
            if src is not None and src[2] * src[3] > 1:
                c, h, w = src[1], src[2], src[3]
                orders[f"{name}.weight"] = (
                    torch.arange(c * h * w).view(c, h, w).permute(1, 2, 0).reshape(-1)
                )

        return hook

    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            handles.append(m.register_forward_pre_hook(linear_hook(name)))
        elif not list(m.children()):
            handles.append(m.register_forward_hook(record))
    was_training = model.training
    try:
        model.eval()
        param = next(model.parameters(), None)
        x = torch.zeros(1, *input_shape, dtype=param.dtype if param is not None else torch.float32)
        model(x)
    except Exception:  # noqa: BLE001 - an untraceable model keeps the torch column order
        orders = {}
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return orders


def block_layout(
    model: nn.Module, block: list[int] | tuple[int, int], input_shape: tuple[int, int, int] | None
) -> BlockLayout | None:
    """The layout for ``block`` (None when unstructured)."""
    r, c = int(block[0]), int(block[1])
    if (r, c) == (1, 1):
        return None
    orders = fc_column_orders(model, input_shape) if input_shape is not None else {}
    return BlockLayout((r, c), orders)


def _block_scores(w: torch.Tensor, name: str, layout: BlockLayout) -> torch.Tensor:
    """Mean |w| of each r x c block, blocks in row-major order of the (permuted) weight."""
    r, c = layout.block
    order = layout.orders.get(name)
    a = w.abs() if order is None else w.abs()[:, order]
    o, i = a.shape
    return a.view(o // r, r, i // c, c).mean(dim=(1, 3)).flatten()


def _expand_blocks(
    keep: torch.Tensor, w: torch.Tensor, name: str, layout: BlockLayout
) -> torch.Tensor:
    """Per-block keep flags -> an element keep-mask in the torch column order."""
    r, c = layout.block
    o, i = w.shape
    mask = keep.view(o // r, 1, i // c, 1).expand(o // r, r, i // c, c).reshape(o, i)
    order = layout.orders.get(name)
    if order is None:
        return mask.clone()
    out = torch.empty_like(mask)
    out[:, order] = mask
    return out


def _units(weights: dict[str, torch.Tensor], layout: BlockLayout | None):
    """Per weight: (scores of its pruning units, elements per unit)."""
    for n, w in weights.items():
        if layout is not None and layout.applies(n, w):
            yield n, _block_scores(w, n, layout), layout.block[0] * layout.block[1]
        else:
            yield n, w.abs().flatten(), 1


def _to_mask(
    keep: torch.Tensor, w: torch.Tensor, n: str, size: int, layout: BlockLayout | None
) -> torch.Tensor:
    return keep.view_as(w) if size == 1 else _expand_blocks(keep, w, n, layout)


def _smallest_k_mask(magnitudes: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-mask zeroing exactly the k smallest entries (ties broken by position)."""
    keep = torch.ones(magnitudes.numel(), dtype=torch.bool)
    if k > 0:
        order = torch.argsort(magnitudes.flatten(), stable=True)
        keep[order[:k]] = False
    return keep.view_as(magnitudes)


@torch.no_grad()
def magnitude_masks(
    weights: dict[str, torch.Tensor],
    *,
    sparsity: float | None = None,
    threshold: float | None = None,
    scope: str = "global",
    layout: BlockLayout | None = None,
) -> dict[str, torch.Tensor]:
    """Keep-masks (True = keep) from |w|.

    With ``sparsity``, exactly round(sparsity * n) weights are zeroed, over all layers together
    (``global``) or in each layer (``layer``). With ``threshold``, every |w| < threshold is zeroed.
    With a block ``layout``, FC weights are ranked and zeroed in whole blocks (mean |w|):
    ``layer`` zeroes exactly round(sparsity * blocks) blocks of such a layer; ``global`` zeroes
    the lowest-ranked units (blocks or single weights) while the zeroed weights stay within
    round(sparsity * n), so it can fall short by less than one block.
    """
    # Sparsity 0 zeroes nothing: no ranking (a global sort of ResNet-50's 23 M weights is 3 s).
    if (sparsity is None and threshold is None) or sparsity == 0 or not weights:
        return {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    units = list(_units(weights, layout))
    if threshold is not None:
        return {n: _to_mask(sc >= threshold, weights[n], n, size, layout) for n, sc, size in units}
    if scope == "layer":
        return {
            n: _to_mask(
                _smallest_k_mask(sc, round(sparsity * sc.numel())), weights[n], n, size, layout
            )
            for n, sc, size in units
        }
    # Units in ascending score, ties by position; zero the longest prefix whose weights fit in
    # the target (with single-weight units: exactly the target's smallest |w|).
    flat = torch.cat([sc for _, sc, _ in units])
    sizes = torch.cat([torch.full((sc.numel(),), size) for _, sc, size in units])
    order = torch.argsort(flat, stable=True)
    target = round(sparsity * sum(w.numel() for w in weights.values()))
    count = int((torch.cumsum(sizes[order], 0) <= target).sum())
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    keep[order[:count]] = False
    masks, start = {}, 0
    for n, sc, size in units:
        masks[n] = _to_mask(keep[start : start + sc.numel()], weights[n], n, size, layout)
        start += sc.numel()
    return masks


def prune_model(
    model: nn.Module,
    *,
    sparsity: float | None = None,
    threshold: float | None = None,
    scope: str = "global",
    exclude: list[str] | tuple[str, ...] = (),
    layout: BlockLayout | None = None,
) -> MaskSet:
    """Zero weights in place and return the masks that keep them zero."""
    weights = prunable_weights(model, exclude)
    masks = magnitude_masks(
        {n: p.detach() for n, p in weights.items()},
        sparsity=sparsity,
        threshold=threshold,
        scope=scope,
        layout=layout,
    )
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
        rows.append(
            {
                "name": name[: -len(".weight")],
                "kind": "Linear" if w.dim() == 2 else "Conv",
                "params": int(w.numel()),
                "zeros": zeros,
                "sparsity": zeros / max(1, w.numel()),
            }
        )
    return rows
