"""Quantization-aware fine-tuning: train with int8 rounding simulated, so that the calibrated
quantization that follows loses less.

What the int8 artifacts will compute is simulated in the forward pass, with gradients passed
straight through the rounding (torch's fake-quantize ops):

- BatchNorm is first folded into the convolution before it, because the ONNX export folds it
  too and int8 rounds the *folded* weights. A fold that would change the outputs (a BN that
  does not follow its neighbour conv) is refused and the BN left as it is, frozen.
- Weights: per-output-channel symmetric int8, scale max|w| / 127, the grid of the QDQ and
  TFLite models. Weights that are zero (pruned) stay zero.
- Activations: the model input and every ReLU-family output, plus each conv / linear output
  that no activation follows: per-tensor asymmetric int8, ranges calibrated on the
  calibration images and then tracked by a slow moving average.

The trained weights are left on their int8 grid, so the quantizer reproduces them exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.fusion import fuse_conv_bn_eval

from exporter.common.progress import Progress
from exporter.models.loading import set_mode
from exporter.training.loop import TrainConfig, train

INT8_MIN, INT8_MAX = -128, 127
WEIGHT_LEVELS = 127  # symmetric: -127..127
RANGE_MOMENTUM = 0.01
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardtanh)
_WEIGHTED = (nn.Conv2d, nn.Linear)


@dataclass
class QatResult:
    epochs: int
    folded_batchnorms: int
    weights_simulated: int
    activations_simulated: int
    loss: list[float]

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if not list(m.children())]


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


@torch.no_grad()
def fold_batchnorms(model: nn.Module, probe: torch.Tensor) -> int:
    """Fold each BatchNorm2d into the Conv2d registered just before it; returns how many.

    Registration order is how ``nn.Sequential`` blocks and most hand-written blocks read, but
    not a guarantee, so every fold is checked on ``probe`` and undone if the outputs move.
    """
    set_mode(model, training=False)
    folded = 0
    leaves = _leaves(model)
    for (conv_name, conv), (bn_name, bn) in zip(leaves, leaves[1:], strict=False):
        if not (
            isinstance(conv, nn.Conv2d)
            and isinstance(bn, nn.BatchNorm2d)
            and conv.out_channels == bn.num_features
        ):
            continue
        before = model(probe)
        _replace(model, conv_name, fuse_conv_bn_eval(conv, bn))
        _replace(model, bn_name, nn.Identity())
        after = model(probe)
        if torch.allclose(before, after, rtol=1e-4, atol=1e-4 * float(before.abs().max())):
            folded += 1
        else:
            _replace(model, conv_name, conv)
            _replace(model, bn_name, bn)
    return folded


class _WeightFakeQuant(nn.Module):
    """Per-output-channel symmetric int8 rounding of a weight, straight-through gradients."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        absmax = w.detach().abs().amax(dim=tuple(range(1, w.dim())))
        scale = (absmax / WEIGHT_LEVELS).clamp_min(1e-12).float()
        zero = torch.zeros(len(scale), dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(
            w, scale, zero, 0, -WEIGHT_LEVELS, WEIGHT_LEVELS
        )


class _ActivationFakeQuant:
    """Per-tensor asymmetric int8 rounding of a module's output (a forward hook)."""

    def __init__(self) -> None:
        self.lo: float | None = None
        self.hi: float | None = None
        self.calibrating = False

    def observe(self, x: torch.Tensor) -> None:
        lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
        if self.lo is None or self.hi is None:
            self.lo, self.hi = lo, hi
        elif self.calibrating:
            self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
        else:
            self.lo += RANGE_MOMENTUM * (lo - self.lo)
            self.hi += RANGE_MOMENTUM * (hi - self.hi)

    def __call__(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        if training or self.calibrating:
            self.observe(x.detach())
        if self.calibrating or self.lo is None or self.hi is None:
            return x
        scale = max((self.hi - self.lo) / (INT8_MAX - INT8_MIN), 1e-8)
        zero_point = int(np.clip(round(INT8_MIN - self.lo / scale), INT8_MIN, INT8_MAX))
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, INT8_MIN, INT8_MAX)


def _activation_points(model: nn.Module) -> list[nn.Module]:
    """Modules whose outputs the int8 model rounds: activations, and weighted layers that no
    activation follows (an activation after a conv is fused into it, so only its output is)."""
    # Identity: what a folded BatchNorm left behind, between a conv and its activation.
    leaves = [m for _, m in _leaves(model) if not isinstance(m, nn.Identity)]
    points = []
    for i, m in enumerate(leaves):
        nxt = leaves[i + 1] if i + 1 < len(leaves) else None
        if isinstance(m, _ACTIVATIONS) or (
            isinstance(m, _WEIGHTED) and not isinstance(nxt, _ACTIVATIONS)
        ):
            points.append(m)
    return points


def _attach_fake_quant(model: nn.Module) -> tuple[list, list[_ActivationFakeQuant]]:
    """Fake-quantize the model's input and every activation point; returns (hooks, quantizers)."""
    hooks, quantizers = [], []

    def attach(module: nn.Module, fq: _ActivationFakeQuant, *, on_input: bool) -> None:
        if on_input:
            hooks.append(
                module.register_forward_pre_hook(
                    lambda mod, args: (fq(args[0], mod.training), *args[1:])
                )
            )
        else:
            hooks.append(module.register_forward_hook(lambda mod, args, out: fq(out, mod.training)))
        quantizers.append(fq)

    attach(model, _ActivationFakeQuant(), on_input=True)
    for m in _activation_points(model):
        attach(m, _ActivationFakeQuant(), on_input=False)
    return hooks, quantizers


def _calibrate(model: nn.Module, quantizers: list[_ActivationFakeQuant], calib_x: np.ndarray):
    """Activation ranges from the calibration images, before any weight moves."""
    for fq in quantizers:
        fq.calibrating = True
    set_mode(model, training=False)
    with torch.no_grad():
        for i in range(0, len(calib_x), 256):
            model(torch.from_numpy(calib_x[i : i + 256]))
    for fq in quantizers:
        fq.calibrating = False


def qat_finetune(
    model: nn.Module,
    train_x: np.ndarray,
    train_y: np.ndarray,
    cfg: TrainConfig,
    calib_x: np.ndarray,
    *,
    progress: Progress | None = None,
) -> QatResult:
    """Fine-tune ``model`` in place with int8 simulated; leaves its weights on the int8 grid."""
    folded = fold_batchnorms(model, torch.from_numpy(calib_x[:32]))
    weighted = [m for _, m in _leaves(model) if isinstance(m, _WEIGHTED)]
    masks = {m: (m.weight.detach() != 0) for m in weighted if bool((m.weight == 0).any())}
    for m in weighted:
        parametrize.register_parametrization(m, "weight", _WeightFakeQuant())
    hooks, quantizers = _attach_fake_quant(model)

    def keep_zeros() -> None:
        with torch.no_grad():
            for m, mask in masks.items():
                m.parametrizations.weight.original.mul_(mask)

    try:
        _calibrate(model, quantizers, calib_x)
        # BatchNorms that could not be folded keep their statistics: only weights learn.
        for bn in [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]:
            bn.momentum = 0.0
        loss = train(
            model, train_x, train_y, cfg, after_step=keep_zeros, progress=progress, label="QAT"
        )
    finally:
        for h in hooks:
            h.remove()
        for m in weighted:
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    set_mode(model, training=False)
    return QatResult(cfg.epochs, folded, len(weighted), len(quantizers), loss)
