"""The one table mapping ONNX op types to TFLite lowerings.

Converter modules under ``exporter.tflite.ops`` register with ``@converter("Conv", ...)``.
``check`` runs during pre-flight, before anything is emitted, and returns a reason string
when the node uses attributes the lowering cannot honour, so a model's problems are all
reported at once instead of one per run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import onnx

if TYPE_CHECKING:
    from exporter.tflite.context import ConversionContext

CheckFn = Callable[[onnx.NodeProto, "ConversionContext"], "str | None"]


@dataclass(frozen=True)
class Converter:
    """A registered lowering: callable as ``(node, ctx) -> None``."""

    op_type: str
    fn: Callable[[onnx.NodeProto, ConversionContext], None]
    emits: str  # human-readable: TFLite ops emitted and notable limits
    check: CheckFn | None = None

    def __call__(self, node: onnx.NodeProto, ctx: ConversionContext) -> None:
        self.fn(node, ctx)


#: ONNX op type -> converter. Populated when ``exporter.tflite.ops`` is imported.
REGISTRY: dict[str, Converter] = {}


def converter(op_type: str, *, emits: str, check: CheckFn | None = None) -> Callable:
    """Register the decorated function as the lowering of ONNX ``op_type``."""

    def register(fn: Callable[[onnx.NodeProto, ConversionContext], None]) -> Callable:
        if op_type in REGISTRY:
            raise ValueError(
                f"ONNX op '{op_type}' already has a converter ({REGISTRY[op_type].fn.__module__})"
            )
        REGISTRY[op_type] = Converter(op_type, fn, emits, check)
        return fn

    return register


def load_all() -> dict[str, Converter]:
    """Import every op-family module (idempotent) and return the registry."""
    import exporter.tflite.ops  # noqa: F401  - registration happens at import

    return REGISTRY
