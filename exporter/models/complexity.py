"""Parameter and multiply-accumulate counts of a torch model for one input."""

from __future__ import annotations

import torch
from torch import nn

from exporter.models.loading import set_mode


@torch.no_grad()
def count_params_macs(model: nn.Module, input_shape: tuple[int, int, int]) -> tuple[int, int]:
    """(parameters, MACs per image) counting Conv and Linear layers, via forward hooks."""
    macs = 0

    def conv_hook(m: nn.Conv2d, _inp, out):
        nonlocal macs
        k = m.weight.shape[1] * m.weight[0, 0].numel()  # (cin / groups) * kh * kw
        macs += out.numel() * k

    def linear_hook(m: nn.Linear, inp, _out):
        nonlocal macs
        macs += inp[0].numel() // inp[0].shape[-1] * m.in_features * m.out_features

    hooks = []
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    try:
        set_mode(model, training=False)(torch.zeros(1, *input_shape))
    finally:
        for h in hooks:
            h.remove()
    params = sum(p.numel() for p in model.parameters())
    return int(params), int(macs)
