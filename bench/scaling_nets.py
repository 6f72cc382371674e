"""torchvision nets for bench/scaling.py, as `--model bench/scaling_nets.py:NAME` factories.

Benchmark code only: torchvision 0.28's import registers meta kernels that this torch build
lacks, so that one module is stubbed before the import. The product never imports torchvision.
"""

from __future__ import annotations

import sys
import types

sys.modules.setdefault(
    "torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations")
)

from torch import nn  # noqa: E402
from torchvision import models  # noqa: E402


def resnet18(num_classes: int = 10) -> nn.Module:
    return models.resnet18(weights=None, num_classes=num_classes)


def resnet50(num_classes: int = 10) -> nn.Module:
    return models.resnet50(weights=None, num_classes=num_classes)


def densenet121(num_classes: int = 10) -> nn.Module:
    return models.densenet121(weights=None, num_classes=num_classes)
