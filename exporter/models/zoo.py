"""Built-in networks, sized from the data: in-channels, image size and class count."""

from __future__ import annotations

from torch import nn


class SeedCNN(nn.Module):
    """The seed document's CNN: two 3x3 conv + ReLU + 2x2 max-pool stages, then two FCs."""

    def __init__(
        self, in_channels: int = 3, image_size: tuple[int, int] = (32, 32), num_classes: int = 10
    ):
        super().__init__()
        h, w = image_size
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * (h // 4) * (w // 4), 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet8(nn.Module):
    """A small residual net with BatchNorm, stride-2 stages and 1x1 projections."""

    def __init__(
        self,
        in_channels: int = 3,
        image_size: tuple[int, int] = (32, 32),
        num_classes: int = 10,
        width: int = 16,
    ):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.layer1 = _BasicBlock(width, width, 1)
        self.layer2 = _BasicBlock(width, width * 2, 2)
        self.layer3 = _BasicBlock(width * 2, width * 4, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width * 4, num_classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(self.pool(x).flatten(1))


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        out = self.block(x)
        return x + out if self.residual else out


class MobileNetV2Cifar(nn.Module):
    """MobileNetV2 for 32x32 inputs: inverted residuals, depthwise convs, BatchNorm, ReLU6,
    residual Add and global average pooling; stride 1 in the stem as CIFAR variants do."""

    # (expansion, out channels, repeats, first stride)
    STAGES = (
        (1, 16, 1, 1),
        (6, 24, 2, 1),
        (6, 32, 3, 2),
        (6, 64, 3, 2),
        (6, 96, 2, 1),
        (6, 160, 2, 2),
    )

    def __init__(
        self,
        in_channels: int = 3,
        image_size: tuple[int, int] = (32, 32),
        num_classes: int = 10,
        width: float = 0.5,
    ):
        super().__init__()

        def ch(c: int) -> int:
            return max(8, int(c * width + 4) // 8 * 8)  # multiples of 8 suit SIMD kernels

        stem = ch(32)
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False),
            nn.BatchNorm2d(stem),
            nn.ReLU6(),
        ]
        cin = stem
        for t, c, n, s in self.STAGES:
            for i in range(n):
                layers.append(_InvertedResidual(cin, ch(c), s if i == 0 else 1, t))
                cin = ch(c)
        head = ch(640)
        layers += [nn.Conv2d(cin, head, 1, bias=False), nn.BatchNorm2d(head), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(head, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


BUILTIN = {"seed-cnn": SeedCNN, "resnet8": ResNet8, "mobilenetv2-cifar": MobileNetV2Cifar}
