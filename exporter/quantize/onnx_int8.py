"""ONNX int8 (QDQ) through onnxruntime's static quantizer.

Per-channel symmetric int8 weights, int8 activations. Calibration ranges are computed once per
method and handed off through a cache file on disk (ORT's ``calibration_cache_path``), so every
variant made from them — full 8-bit for portable kernels, 7-bit ``reduce_range`` for x86 CPUs
without VNNI, layers left in float — shares exactly the same activation ranges.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

from exporter.common.atomic import atomic_path
from exporter.errors import DataError
from exporter.outdir import calibration_cache

__all__ = ["METHODS", "QuantSettings", "calibration_cache", "quantize_onnx"]

METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}


@dataclass(frozen=True)
class QuantSettings:
    method: str = "minmax"
    reduce_range: bool = False
    per_channel: bool = True
    float_nodes: tuple[str, ...] = field(default_factory=tuple)  # left unquantized
    # "int16": the 16x8 scheme (int16 activations with zero point 0, int8 weights), as
    # TFLite's 16x8 kernels require; the calibration ranges are the same as int8's.
    activations: str = "int8"


class _BatchReader(CalibrationDataReader):
    """Feeds calibration images one at a time, as the deployed model sees them (batch 1)."""

    def __init__(self, inputs: np.ndarray, input_name: str):
        self._items: Iterator[dict] = iter(
            {input_name: inputs[i : i + 1]} for i in range(len(inputs))
        )

    def get_next(self) -> dict | None:
        return next(self._items, None)


@contextlib.contextmanager
def _quiet():
    """ORT's quantizer logs advice at WARNING level on every call; keep the console clean."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def quantize_onnx(
    fp32_path: Path,
    out_path: Path,
    settings: QuantSettings,
    *,
    calib_inputs: np.ndarray | None,
    cache: Path,
    input_name: str | None = None,
) -> Path:
    """Write a QDQ int8 (or 16x8) model. ``calib_inputs`` are needed only when ``cache`` does
    not exist yet; they feed the model's own input (``input_name``, else its first graph
    input: a model edgepack did not write may name it anything)."""
    fresh = not cache.is_file()
    if fresh and input_name is None:
        input_name = _graph_input_name(fp32_path)
    reader = _BatchReader(calib_inputs, input_name) if fresh else None
    with atomic_path(out_path) as tmp, _quiet(), _calibration_errors(cache):
        quantize_static(
            str(fp32_path),
            str(tmp),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=settings.per_channel,
            reduce_range=settings.reduce_range,
            activation_type=QuantType.QInt16
            if settings.activations == "int16"
            else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=METHODS[settings.method],
            nodes_to_exclude=list(settings.float_nodes),
            calibration_cache_path=str(cache),
            extra_options={
                "WeightSymmetric": True,
                "ActivationSymmetric": settings.activations == "int16",
            },
        )
        if fresh and _non_finite_ranges(cache):
            # Inf ranges pass ORT's checks and give an int8 model of infinite scales.
            raise AssertionError("scale issue")
    if fresh and cache.is_file():
        _sort_cache(cache)
    return out_path


def _graph_input_name(path: Path) -> str:
    """The first graph input that is not an initializer (read without the weights)."""
    model = onnx.load(str(path), load_external_data=False)
    weights = {i.name for i in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in weights)


@contextlib.contextmanager
def _calibration_errors(cache: Path):
    """NaN/Inf activations end in ORT's ``scale issue`` assertion, or numpy's histogram refusing
    a non-finite range (entropy, percentile): one line that says what is wrong instead. numpy's
    "All-NaN" warning on the way is that same NaN, reported by the error, not printed before it."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="All-NaN", category=RuntimeWarning)
            yield
    except (AssertionError, ValueError) as exc:
        if "scale issue" not in str(exc) and "is not finite" not in str(exc):
            raise
        bad = _non_finite_ranges(cache)
        where = f" of {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}" if bad else ""
        raise DataError(
            f"int8 calibration: the activation ranges{where} are not finite (NaN or Inf): the "
            "fp32 model computes NaN/Inf on the calibration images, which int8 cannot represent"
        ) from None


def _non_finite_ranges(cache: Path) -> list[str]:
    """Names of the tensors whose cached range holds a NaN or Inf (ORT wrote the cache first)."""

    def finite(value) -> bool:
        if isinstance(value, dict):
            return all(finite(v) for v in value.values())
        if isinstance(value, list):
            return all(finite(v) for v in value)
        return not isinstance(value, float) or math.isfinite(value)

    try:
        payload = json.loads(cache.read_text())
    except (OSError, ValueError):
        return []
    data = payload.get("data", payload) if isinstance(payload, dict) else {}
    return sorted(k for k, v in data.items() if isinstance(data, dict) and not finite(v))


def _sort_cache(cache: Path) -> None:
    """Rewrite ORT's cache with sorted keys: ORT collects the tensor names in a set, so its
    order (and the file's bytes) changed with PYTHONHASHSEED from run to run. ORT reads the
    ranges back by name, so the order is free; the mode is made the usual one (ORT: 0600)."""
    text = json.dumps(json.loads(cache.read_text()), sort_keys=True)
    with atomic_path(cache) as tmp:
        tmp.write_text(text)
