"""Quantization stage: ONNX fp32 -> calibrated ONNX int8 (QDQ), with an accuracy search.

The first calibration method is tried; when int8 loses more than ``quantize.max_drop`` points
against fp32 on tuning images (taken from the training split, never the eval set), the
fallback methods are tried, then the most sensitive layers are left in float, one at a time,
then (``quantize.qat_epochs``) quantization-aware fine-tuning (qat.py, run by the pipeline,
which holds the torch model). Every attempt is recorded for the report. A drop is judged
within one tuning image of the budget (runtime_check.verdict.drop_within), so float noise in
the difference of two accuracies never counts as a miss.

This stage also decides what the int8 TFLite model is made from: when the ONNX model gets
7-bit weights (``reduce_range``, for x86 CPUs without VNNI), it writes a full 8-bit twin,
``model.int8.portable.onnx``, from the same cached calibration ranges, because TFLite's int8
kernels take 8-bit weights on every CPU. ``QuantOutcome.tflite_source`` names the file.

``activations="int16"`` runs the same search (methods, sensitivity table, float fallbacks) for
the 16x8 scheme: int16 activations, int8 weights, never 7-bit (the saturation that
``reduce_range`` avoids is an 8-bit-activation kernel issue). It reuses int8's calibration
cache, so both share their activation ranges.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from exporter.onnx.export import onnx_session, run_batched
from exporter.outdir import ONNX_INT8_PORTABLE
from exporter.quantize.onnx_int8 import QuantSettings, calibration_cache, quantize_onnx
from exporter.quantize.sensitivity import (
    first_divergence,
    most_sensitive_nodes,
    sampled_sensitivity,
)
from exporter.recipe import QuantizeSpec
from runtime_check.verdict import drop_within

VNNI_FEATURES = {"avx512_vnni", "avx_vnni", "amx_int8"}
# Images of the per-layer sensitivity pass: its SNR and cosine pool every element of every
# image, so a small fixed sample ranks the layers as well as the whole tuning set would.
SENSITIVITY_IMAGES = 64
# ... fewer on a large net: as many as make about this many bytes of layer outputs (both
# models), at least sensitivity.MIN_IMAGES: the pass costs about as much on a large net.
SENSITIVITY_BYTES = 4 << 30
# Input bytes per ONNX Runtime call in the search's evaluations (see eval_chunk).
CHUNK_BYTES = 16 << 20


@dataclass
class QuantOutcome:
    settings: QuantSettings
    reduce_range_reason: str
    fp32_tuning_accuracy: float
    onnx_path: Path  # the chosen int8 QDQ model
    # What the int8 TFLite model is converted from: onnx_path, or its full 8-bit twin
    # (ONNX_INT8_PORTABLE, same calibration ranges) when onnx_path has 7-bit weights.
    tflite_source: Path
    tuning_samples: int
    attempts: list[dict] = field(default_factory=list)
    sensitivity: list[dict] = field(default_factory=list)
    first_divergence: str | None = None
    within_budget: bool = True
    seconds: float = 0.0
    calibration_note: str = ""
    # Quantization-aware fine-tuning, when it ran or was skipped (the report's Qat, as JSON).
    qat: dict | None = None
    # What the search spent (the report's SearchCost, as JSON).
    cost: dict | None = None

    def within(self, drop: float, max_drop: float) -> bool:
        """The int8 budget, judged within one tuning image (float noise never fails it)."""
        return drop_within(drop, max_drop, self.tuning_samples)

    def section(self) -> dict:
        """The report's ``quantization`` section, as JSON (typed by the report's reader)."""
        s = self.settings
        return {
            "method": s.method,
            "reduce_range": s.reduce_range,
            "reduce_range_reason": self.reduce_range_reason,
            "per_channel": s.per_channel,
            "float_layers": list(s.float_nodes),
            "fp32_tuning_accuracy": self.fp32_tuning_accuracy,
            "attempts": self.attempts,
            "calibration": self.calibration_note,
            "within_budget": self.within_budget,
            "sensitivity": self.sensitivity,
            "first_divergence": self.first_divergence,
            "seconds": round(self.seconds, 2),
            "qat": self.qat,
            "cost": self.cost,
        }


def decide_reduce_range(setting: str, device_kind: str, cpu: dict) -> tuple[bool, str]:
    """7-bit weights only where the int8 kernels would saturate: x86 without VNNI."""
    if setting != "auto":
        return setting == "on", f"recipe sets reduce_range = {setting}"
    if device_kind != "local":
        return False, f"target runs on a {device_kind} device: full 8-bit weights"
    machine = (cpu.get("machine") or "").lower()
    features = set(cpu.get("features") or [])
    if machine not in ("x86_64", "amd64", "i686", "x86"):
        return False, f"{machine} CPU: full 8-bit weights"
    if features & VNNI_FEATURES:
        found = ", ".join(sorted(features & VNNI_FEATURES))
        return False, f"x86 with {found}: int8 dot products do not saturate, full 8-bit weights"
    return True, (
        "x86 without VNNI: ORT's u8s8 kernels saturate on 8-bit weights, "
        "so weights use 7 bits (reduce_range)"
    )


def eval_chunk(x: np.ndarray) -> int:
    """Images per ONNX Runtime call: up to 256, fewer for large images, so that one call's
    activations stay in the hundreds of MB (ResNet-50 at 224x224 takes 26 a call)."""
    return max(1, min(256, CHUNK_BYTES // max(1, x[:1].nbytes)))


def _accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    logits = run_batched(onnx_session(path), x, chunk=eval_chunk(x))[0]
    return float((logits.argmax(1) == y).mean() * 100.0)


@dataclass
class _Cost:
    """What the search spent (the report's SearchCost)."""

    calibrations: int = 0
    evaluations: int = 0
    evaluation_s: float = 0.0
    sensitivity_passes: int = 0
    sensitivity_images: int = 0
    sensitivity_s: float = 0.0

    def accuracy(self, path: Path, x: np.ndarray, y: np.ndarray) -> float:
        t0 = time.perf_counter()
        acc = _accuracy(path, x, y)
        self.evaluations += 1
        self.evaluation_s += time.perf_counter() - t0
        return acc

    def sensitivity(self, fp32_path: Path, int8_path: Path, x: np.ndarray) -> list[dict]:
        t0 = time.perf_counter()
        rows, used = sampled_sensitivity(fp32_path, int8_path, x, SENSITIVITY_BYTES)
        self.sensitivity_passes += 1
        self.sensitivity_images = max(self.sensitivity_images, used)
        self.sensitivity_s += time.perf_counter() - t0
        return rows

    def to_dict(self, tuning_images: int) -> dict:
        return {
            "calibrations": self.calibrations,
            "evaluations": self.evaluations,
            "tuning_images": tuning_images,
            # Milliseconds kept: a small net's pass takes < 5 ms, which 2 decimals called 0 s.
            "evaluation_seconds": round(self.evaluation_s, 4),
            "sensitivity_passes": self.sensitivity_passes,
            "sensitivity_images": self.sensitivity_images,
            "sensitivity_seconds": round(self.sensitivity_s, 4),
        }


class _Search:
    """The state of one search: the files, the images, the variant on disk, the cost."""

    def __init__(self, fp32_path: Path, out_path: Path, calib_x, tune_x, tune_y, outcome):
        self.fp32_path, self.out_path = fp32_path, out_path
        self.calib_x, self.tune_x, self.tune_y = calib_x, tune_x, tune_y
        self.outcome: QuantOutcome = outcome
        self.cost = _Cost()
        self.on_disk: QuantSettings | None = None  # the variant out_path holds now

    def write(self, settings: QuantSettings, path: Path | None = None) -> None:
        """Quantize with ``settings``: calibrating only when the method has no cache yet."""
        cache = calibration_cache(self.out_path.parent, settings.method)
        fresh = not cache.is_file()
        self.cost.calibrations += fresh
        calib = self.calib_x if fresh else None
        quantize_onnx(
            self.fp32_path, path or self.out_path, settings, calib_inputs=calib, cache=cache
        )
        if path is None:
            self.on_disk = settings

    def attempt(self, settings: QuantSettings) -> float:
        """The drop of one variant on the tuning images, recorded as an attempt."""
        self.write(settings)
        acc = self.cost.accuracy(self.out_path, self.tune_x, self.tune_y)
        drop = self.outcome.fp32_tuning_accuracy - acc
        self.outcome.attempts.append(
            {
                "method": settings.method,
                "float_layers": list(settings.float_nodes),
                "tuning_accuracy": acc,
                "drop": drop,
            }
        )
        return drop

    def methods(self, spec: QuantizeSpec, first: QuantSettings) -> tuple[float, QuantSettings]:
        """The calibration methods in order, until one holds the budget; returns the best."""
        best: tuple[float, QuantSettings] | None = None
        names = [spec.method] + [m for m in spec.fallback_methods if m != spec.method]
        for method in names:
            settings = dataclasses.replace(first, method=method)
            drop = self.attempt(settings)
            if best is None or drop < best[0]:
                best = (drop, settings)
            if self.outcome.within(drop, spec.max_drop):
                break
        return best

    def float_fallbacks(
        self, spec: QuantizeSpec, drop: float, chosen: QuantSettings, sens_x: np.ndarray
    ) -> tuple[float, QuantSettings, list[dict]]:
        """The most sensitive layers left in float, one more at a time, ranked by one
        sensitivity pass on ``chosen``; returns the best drop, its settings and the pass."""
        if self.on_disk != chosen:
            self.write(chosen)
        rows = self.cost.sensitivity(self.fp32_path, self.out_path, sens_x)
        ranked = most_sensitive_nodes(rows, spec.max_float_layers)
        base = chosen
        for k in range(1, len(ranked) + 1):
            settings = dataclasses.replace(base, float_nodes=tuple(ranked[:k]))
            d = self.attempt(settings)
            if d < drop:
                drop, chosen = d, settings
            if self.outcome.within(d, spec.max_drop):
                break
        return drop, chosen, rows


def quantize_stage(
    fp32_path: Path,
    out_path: Path,
    spec: QuantizeSpec,
    *,
    calib_x: np.ndarray,
    tune_x: np.ndarray,
    tune_y: np.ndarray,
    device_kind: str,
    cpu: dict,
    activations: str = "int8",
) -> QuantOutcome:
    """Search calibration methods and float fallbacks; write the chosen int8 (or 16x8, with
    ``activations="int16"``) model to out_path.

    The cost is bounded: one calibration per method (its ranges cached on disk and reused by
    every later quantization with that method), one evaluation on the tuning images per
    attempt, and the per-layer sensitivity in one pass over SENSITIVITY_IMAGES images, not
    one evaluation per layer — a second pass only when float fallbacks had to be ranked on
    another variant than the one chosen. ``QuantOutcome.cost`` records what was spent.
    """
    start = time.perf_counter()
    sens_x = tune_x[:SENSITIVITY_IMAGES]
    if activations == "int16":
        reduce_range, why = False, "16x8: int8 weights, int16 activations (full 8-bit weights)"
    else:
        reduce_range, why = decide_reduce_range(spec.reduce_range, device_kind, cpu)
    first = QuantSettings(spec.method, reduce_range, spec.per_channel, activations=activations)
    outcome = QuantOutcome(
        first, why, 0.0, onnx_path=out_path, tflite_source=out_path, tuning_samples=len(tune_y)
    )
    search = _Search(fp32_path, out_path, calib_x, tune_x, tune_y, outcome)
    outcome.fp32_tuning_accuracy = search.cost.accuracy(fp32_path, tune_x, tune_y)
    drop, chosen = search.methods(spec, first)
    ranked_on: tuple[QuantSettings, list[dict]] | None = None
    if not outcome.within(drop, spec.max_drop) and spec.max_float_layers > 0:
        base = chosen
        drop, chosen, rows = search.float_fallbacks(spec, drop, chosen, sens_x)
        ranked_on = (base, rows)
    # Leave the chosen variant on disk (the last attempt may have been another one).
    if search.on_disk != chosen:
        search.write(chosen)
    if chosen.reduce_range:
        # The full 8-bit twin, from the ranges in the cache: both models share them.
        outcome.tflite_source = out_path.with_name(ONNX_INT8_PORTABLE)
        search.write(dataclasses.replace(chosen, reduce_range=False), outcome.tflite_source)
    outcome.settings = chosen
    outcome.within_budget = outcome.within(drop, spec.max_drop)
    for a in outcome.attempts:
        a["chosen"] = a["method"] == chosen.method and a["float_layers"] == list(chosen.float_nodes)
    # The ranking pass already measured the chosen model when no layer went back to float.
    if ranked_on is not None and ranked_on[0] == chosen:
        outcome.sensitivity = ranked_on[1]
    else:
        outcome.sensitivity = search.cost.sensitivity(fp32_path, out_path, sens_x)
    outcome.first_divergence = first_divergence(outcome.sensitivity)
    outcome.cost = search.cost.to_dict(len(tune_y))
    outcome.seconds = time.perf_counter() - start
    return outcome
