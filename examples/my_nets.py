"""Your own network for edgepack: ``--model examples/my_nets.py:SmallNet``.

edgepack calls the factory with the sizes it reads from the data, for the arguments the
signature names: ``in_channels``, ``image_size`` (height, width) and ``num_classes``.
"""

from __future__ import annotations

from torch import nn


def SmallNet(in_channels: int, image_size: tuple[int, int], num_classes: int) -> nn.Module:  # noqa: N802 - named like the class it builds
    h, w = image_size
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * (h // 2) * (w // 2), 64),
        nn.ReLU(),
        nn.Linear(64, num_classes),
    )
