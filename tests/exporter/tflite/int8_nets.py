"""A MobileNetV2-style net a little wider than nets.MobileNetV2Tiny, for the int8 size test.

MobileNetV2Tiny is so small (~14k weights) that the per-channel scale / zero-point vectors the
TFLite schema requires outweigh the int8 savings; this one has weights enough to be a fair
measure of the int8 file size. Same patterns: BatchNorm, ReLU6, depthwise, residual Add.
"""

from __future__ import annotations

from nets import MobileNetV2Like, SeedCNN


class MobileNetV2Small(MobileNetV2Like):
    """Wide enough that int8 per-channel scales are a small share of the file."""

    def __init__(self, num_classes: int = 10):
        super().__init__(
            32,
            [(32, 32, 1, 6), (32, 64, 2, 6), (64, 64, 1, 6), (64, 96, 2, 6), (96, 96, 1, 6)],
            384,
            num_classes,
        )


class SeedCNNValid(SeedCNN):
    """nets.SeedCNN with an unpadded first conv: the uint8 input normalization folds into it."""

    def __init__(self, num_classes: int = 10):
        super().__init__(num_classes, first_padding=0)
