"""Small CIFAR-sized test networks covering the layer patterns the TFLite exporter must handle."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tests.helpers import randomize_batchnorm


class SeedCNN(nn.Module):
    """The project's seed model: two conv/pool stages and a two-layer head."""

    def __init__(self, num_classes: int = 10, first_padding: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=first_padding)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        side = 8 if first_padding else 7  # 32x32 input: (32 - 2 + 2p) // 2 // 2
        self.fc1 = nn.Linear(32 * side * side, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        self.body = nn.Sequential(
            *_conv_bn(cin, hidden, 1),
            nn.ReLU6(),
            *_conv_bn(hidden, hidden, 3, stride, groups=hidden),
            nn.ReLU6(),
            *_conv_bn(hidden, cout, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.use_residual else y


class MobileNetV2Like(nn.Module):
    """Stem conv, inverted residuals (cin, cout, stride, expansion), 1x1 head, pool, FC."""

    def __init__(
        self, stem: int, blocks: list[tuple[int, int, int, int]], head: int, num_classes: int = 10
    ):
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn(3, stem, 3),
            nn.ReLU6(),
            *(InvertedResidual(*b) for b in blocks),
            *_conv_bn(blocks[-1][1], head, 1),
            nn.ReLU6(),
        )
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(head, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


class MobileNetV2Tiny(MobileNetV2Like):
    def __init__(self, num_classes: int = 10):
        super().__init__(16, [(16, 16, 1, 4), (16, 24, 2, 4), (24, 24, 1, 4)], 64, num_classes)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Sequential(*_conv_bn(cin, cout, 3, stride))
        self.conv2 = nn.Sequential(*_conv_bn(cout, cout, 3))
        self.shortcut = (
            nn.Sequential(*_conv_bn(cin, cout, 1, stride))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(F.relu(self.conv1(x))) + self.shortcut(x))


class ResNetTiny(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(3, 16, 3), nn.ReLU())
        self.layers = nn.Sequential(
            BasicBlock(16, 16, 1), BasicBlock(16, 32, 2), BasicBlock(32, 32, 1)
        )
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.expand(F.relu(self.reduce(s))))


class MixedNet(nn.Module):
    """Concat, HardSwish, squeeze-excite (conv and FC flavours) and a bilinear 2x upsample."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(3, 16, 3, 2), nn.Hardswish())
        self.se = SqueezeExcite(16, 4)
        self.branch = nn.Sequential(*_conv_bn(16, 8, 3), nn.Hardswish())
        self.fc_gate = nn.Linear(24, 24)
        self.head = nn.Conv2d(24, 32, 3, stride=2, padding=1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.se(self.stem(x))
        up = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        y = torch.cat([up, F.interpolate(self.branch(x), scale_factor=2, mode="nearest")], dim=1)
        gate = torch.sigmoid(self.fc_gate(y.mean(dim=(2, 3))))  # FC-style squeeze-excite
        y = y * gate[:, :, None, None]
        y = F.hardswish(self.head(y))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


NETS = {"seed": SeedCNN, "mobilenetv2": MobileNetV2Tiny, "resnet": ResNetTiny, "mixed": MixedNet}


def build(name: str, seed: int = 0) -> nn.Module:
    """An eval-mode net with non-trivial BatchNorm statistics (so folding is really tested)."""
    torch.manual_seed(seed)
    # BN statistics continue the sequence the weights' initialization drew from
    return randomize_batchnorm(NETS[name](), seed=None)
