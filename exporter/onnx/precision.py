"""float16 ONNX: the graph in float16 with its float32 inputs and outputs kept.

onnxconverter-common's ``convert_float_to_float16`` with ``keep_io_types=True`` casts every
float32 initializer to float16 and puts a Cast at each graph input and output, so a caller
feeds and reads float32 exactly as with ``model.fp32.onnx``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
from onnxconverter_common import float16

from exporter.common.atomic import atomic_path

__all__ = ["float16_onnx"]


def float16_onnx(fp32_path: Path, out_path: Path) -> Path:
    """Write the float16 copy of ``fp32_path`` (float32 I/O) to ``out_path`` atomically."""
    model = onnx.load(str(fp32_path))
    with warnings.catch_warnings():
        # It warns for every value it clamps to the float16 range; the check below judges it.
        warnings.simplefilter("ignore", UserWarning)
        half = float16.convert_float_to_float16(model, keep_io_types=True)
    onnx.checker.check_model(half)
    with atomic_path(out_path) as tmp:
        onnx.save(half, str(tmp))
    return out_path
