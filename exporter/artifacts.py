"""What the exporter knows about each artifact it wrote (runtime_check measures the rest)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Artifact:
    path: str  # file name inside the output directory
    format: str  # onnx | tflite
    precision: str  # fp32 | int8 | ...
    storage: str = "dense"  # dense | sparse | ...
    extra: dict = field(default_factory=dict)  # format-specific: op counts, transposes, layout
