"""torch's eager passes over many images (the reference logits, a compressed model's logits):
how many images a pass takes, and channels-last memory where the model computes the same on it.

oneDNN's convolutions run faster on channels-last tensors on this CPU, with the same math up to
float rounding (2,000 CIFAR images, 2 threads: MobileNetV2-CIFAR 17.4 s -> 9.0 s, the seed CNN
0.41 -> 0.28 s; ResNet-50 at 224x224 155 -> 93 ms an image). A model whose forward depends on
memory layout (``as_strided``, a ``.view`` that needs contiguous memory, raw strides in custom
code) would raise or, worse, compute something else silently; so channels-last is used only
after the model gives the same outputs both ways on two seeded random images (not data images:
each of those still goes through the model once), and every parameter is put back in
contiguous memory afterwards: compression and export see the model as the user gave it.
"""

from __future__ import annotations

import contextlib
import copy
import weakref
from collections.abc import Iterator

import torch
from torch import nn

# Agreement on the probe: float rounding differs between the two kernels' summation orders by
# ~1e-5 of the logits' span (as much as float32 vs float64 on ResNet-50); a layout-dependent
# model is off by the order of the span itself.
AGREEMENT = 1e-3


# Images per forward pass: up to 256 (no faster above, measured on MobileNetV2-CIFAR), fewer for
# large images so that one pass's activations stay in the hundreds of MB.
PASS_IMAGES = 256
PASS_INPUT_BYTES = 32 << 20


def images_per_pass(x) -> int:
    """Images per forward pass for inputs like ``x`` (an array or tensor of images)."""
    return max(1, min(PASS_IMAGES, PASS_INPUT_BYTES // max(1, x[:1].nbytes)))


def as_channels_last(x: torch.Tensor, fast: bool = True) -> torch.Tensor:
    """``x`` in channels-last memory when ``fast`` (what :func:`channels_last` yielded)."""
    return x.contiguous(memory_format=torch.channels_last) if fast else x


def _same(got: object, expected: object) -> bool:
    if not isinstance(got, torch.Tensor) or not isinstance(expected, torch.Tensor):
        return False
    if got.shape != expected.shape:
        return False
    got, expected = got.detach().double(), expected.detach().double()
    if not bool(torch.isfinite(got).all()):
        return False
    span = float(expected.max() - expected.min()) if expected.numel() else 0.0
    return float((got - expected).abs().max()) <= AGREEMENT * max(span, 1e-6)


# Modules held in channels-last memory by an open :func:`channels_last` block.
_HELD: weakref.WeakSet = weakref.WeakSet()


@contextlib.contextmanager
def channels_last(
    module: nn.Module, example: torch.Tensor, *, for_training: bool = False
) -> Iterator[bool]:
    """Hold ``module`` (in eval mode) in channels-last memory when it computes the same that
    way on random images shaped like ``example``; yields whether it does. With
    ``for_training``, a training step (forward and backward in train mode, on a copy) must run
    that way too. Parameters are back in contiguous memory on exit, whatever happened; a block
    inside another one on the same module leaves the layout to the outer block."""
    if module in _HELD:
        yield True
        return
    if example.dim() != 4 or not any(p.dim() == 4 for p in module.parameters()):
        yield False
        return
    try:
        agrees = _probe(module, example)
        if agrees and for_training:
            agrees = _trains(module, example)
        if not agrees:
            module.to(memory_format=torch.contiguous_format)
            yield False
            return
        _HELD.add(module)
        try:
            yield True
        finally:
            _HELD.discard(module)
    finally:
        module.to(memory_format=torch.contiguous_format)


def _random_images(example: torch.Tensor) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randn((2, *example.shape[1:]), generator=gen, dtype=example.dtype)


def _probe(module: nn.Module, example: torch.Tensor) -> bool:
    """Whether ``module`` (left in channels-last memory) computes the same both ways."""
    probe = _random_images(example)
    try:
        with torch.no_grad():
            expected = module(probe)
            module.to(memory_format=torch.channels_last)
            return _same(module(as_channels_last(probe)), expected)
    except Exception:  # noqa: BLE001 — any failure of the layout means: the plain layout
        return False


def _trains(module: nn.Module, example: torch.Tensor) -> bool:
    """Whether a training step runs in channels-last memory (a branch taken only in train mode
    may need contiguous memory): on a copy, with torch's generator restored after. A module
    with hooks or parametrizations is not tried: a copy shares its hooks' state (QAT's range
    observers would learn from the random images), so it trains in plain memory."""
    for m in module.modules():
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks:
            return False
        if getattr(m, "parametrizations", None) is not None:
            return False
    try:
        twin = copy.deepcopy(module)
        with torch.random.fork_rng(devices=[]):
            twin.train()
            out = twin(as_channels_last(_random_images(example)))
            out.float().sum().backward()
        return True
    except Exception:  # noqa: BLE001 — as in _probe
        return False
