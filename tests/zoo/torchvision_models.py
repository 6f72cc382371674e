"""torchvision's classification models for the zoo test and ``bench/zoo.py``.

torchvision's wheels on PyPI are built against CUDA torch, and their C extension does not load
beside the CPU torch build pinned here (torchvision notes it and goes on), and then
``import torchvision`` fails in ``torchvision._meta_registrations`` with "operator
torchvision::nms does not exist": that module registers fake kernels for ops the extension
would have defined (nms, roi_align). The classification models are pure
Python and need none of those ops, so that one module is replaced by an empty one before the
import. The hack lives here, in the test helpers, never in the product.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

META = "torchvision._meta_registrations"


def load_torchvision() -> tuple[types.ModuleType | None, str]:
    """``(torchvision.models, "")``, or ``(None, why)`` when torchvision cannot be imported."""
    if META not in sys.modules:
        sys.modules[META] = types.ModuleType(META)
    try:
        from torchvision import models
    except Exception as exc:  # ImportError, or the extension's own OSError / RuntimeError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, (
            "needs torchvision==0.28.0 (pip install -c constraints.txt --no-deps "
            f"torchvision==0.28.0): {first}"
        )
    return models, ""


@dataclass(frozen=True)
class ZooModel:
    name: str
    kwargs: dict = field(default_factory=dict)
    # The smallest input side at which the network's own pooling still has pixels to pool
    # (alexnet's third 3x3/2 max-pool needs >= 63).
    min_size: int = 32


ZOO: dict[str, ZooModel] = {
    m.name: m
    for m in (
        ZooModel("resnet18"),
        ZooModel("resnet34"),
        ZooModel("resnet50"),
        ZooModel("resnext50_32x4d"),
        ZooModel("wide_resnet50_2"),
        ZooModel("mobilenet_v2"),
        ZooModel("mobilenet_v3_small"),
        ZooModel("mobilenet_v3_large"),
        ZooModel("efficientnet_b0"),
        ZooModel("efficientnet_v2_s"),
        ZooModel("squeezenet1_0"),
        ZooModel("squeezenet1_1"),
        ZooModel("shufflenet_v2_x0_5"),
        ZooModel("shufflenet_v2_x1_0"),
        ZooModel("mnasnet0_5"),
        ZooModel("mnasnet1_0"),
        ZooModel("regnet_x_400mf"),
        ZooModel("regnet_y_400mf"),
        ZooModel("densenet121"),
        # The auxiliary classifiers exist only in training mode; init_weights=False skips
        # scipy's truncated-normal init (scipy is not a dependency of edgepack).
        ZooModel("googlenet", {"aux_logits": False, "init_weights": False}),
        ZooModel("vgg11_bn"),
        ZooModel("alexnet", min_size=64),
        ZooModel("convnext_tiny"),
    )
}


def warm_batchnorm(model: nn.Module, size: int, seed: int = 0, batches: int = 4) -> nn.Module:
    """Random weights with BatchNorm statistics measured on random images (a few batches in
    train mode, cumulative average), as a trained network has: the activations stay in range
    through deep stacks, so a folding or layout error shows in the logits. Returns the model in
    eval mode."""
    gen = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative: every batch counts the same
    model.train()
    with torch.no_grad():
        for _ in range(batches if bns else 0):
            model(torch.randn(8, 3, size, size, generator=gen))
    return model.eval()


def build(name: str, size: int, seed: int = 0, num_classes: int = 1000) -> nn.Module:
    """torchvision's ``name`` with seeded random weights and warmed-up BatchNorm, in eval mode."""
    models, why = load_torchvision()
    if models is None:
        raise RuntimeError(why)
    spec = ZOO[name]
    if size < spec.min_size:
        raise ValueError(f"{name} needs an input of at least {spec.min_size}x{spec.min_size}")
    torch.manual_seed(seed)
    factory: Callable[..., nn.Module] = getattr(models, name)
    model = factory(weights=None, num_classes=num_classes, **spec.kwargs)
    return warm_batchnorm(model, size, seed)
