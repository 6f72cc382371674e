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

from exporter.onnx.export import onnx_logits
from exporter.outdir import ONNX_INT8_PORTABLE
from exporter.quantize.onnx_int8 import QuantSettings, calibration_cache, quantize_onnx
from exporter.quantize.sensitivity import first_divergence, layer_sensitivity, most_sensitive_nodes
from exporter.recipe import QuantizeSpec
from runtime_check.verdict import drop_within

VNNI_FEATURES = {"avx512_vnni", "avx_vnni", "amx_int8"}
SENSITIVITY_IMAGES = 200


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


def _accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    return float((onnx_logits(path, x).argmax(1) == y).mean() * 100.0)


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
    ``activations="int16"``) model to out_path."""
    start = time.perf_counter()
    work = out_path.parent
    if activations == "int16":
        reduce_range, why = False, "16x8: int8 weights, int16 activations (full 8-bit weights)"
    else:
        reduce_range, why = decide_reduce_range(spec.reduce_range, device_kind, cpu)
    fp32_acc = _accuracy(fp32_path, tune_x, tune_y)
    outcome = QuantOutcome(
        QuantSettings(spec.method, reduce_range, spec.per_channel, activations=activations),
        why,
        fp32_acc,
        onnx_path=out_path,
        tflite_source=out_path,
        tuning_samples=len(tune_y),
    )

    def attempt(settings: QuantSettings) -> float:
        quantize_onnx(
            fp32_path,
            out_path,
            settings,
            calib_inputs=calib_x,
            cache=calibration_cache(work, settings.method),
        )
        acc = _accuracy(out_path, tune_x, tune_y)
        outcome.attempts.append(
            {
                "method": settings.method,
                "float_layers": list(settings.float_nodes),
                "tuning_accuracy": acc,
                "drop": fp32_acc - acc,
            }
        )
        return fp32_acc - acc

    best: tuple[float, QuantSettings] | None = None
    methods = [spec.method] + [m for m in spec.fallback_methods if m != spec.method]
    for method in methods:
        settings = QuantSettings(method, reduce_range, spec.per_channel, activations=activations)
        drop = attempt(settings)
        if best is None or drop < best[0]:
            best = (drop, settings)
        if outcome.within(drop, spec.max_drop):
            break
    drop, chosen = best
    if not outcome.within(drop, spec.max_drop) and spec.max_float_layers > 0:
        quantize_onnx(
            fp32_path,
            out_path,
            chosen,
            calib_inputs=calib_x,
            cache=calibration_cache(work, chosen.method),
        )
        rows = layer_sensitivity(fp32_path, out_path, tune_x[:SENSITIVITY_IMAGES])
        ranked = most_sensitive_nodes(rows, spec.max_float_layers)
        for k in range(1, len(ranked) + 1):
            settings = dataclasses.replace(chosen, float_nodes=tuple(ranked[:k]))
            d = attempt(settings)
            if d < drop:
                drop, chosen = d, settings
            if outcome.within(d, spec.max_drop):
                break
    # Leave the chosen variant on disk (the last attempt may have been another one).
    quantize_onnx(
        fp32_path,
        out_path,
        chosen,
        calib_inputs=calib_x,
        cache=calibration_cache(work, chosen.method),
    )
    if chosen.reduce_range:
        outcome.tflite_source = out_path.with_name(ONNX_INT8_PORTABLE)
        quantize_onnx(
            fp32_path,
            outcome.tflite_source,
            dataclasses.replace(chosen, reduce_range=False),
            calib_inputs=None,  # the ranges are in the cache: both models share them
            cache=calibration_cache(work, chosen.method),
        )
    outcome.settings = chosen
    outcome.within_budget = outcome.within(drop, spec.max_drop)
    for a in outcome.attempts:
        a["chosen"] = a["method"] == chosen.method and a["float_layers"] == list(chosen.float_nodes)
    outcome.sensitivity = layer_sensitivity(fp32_path, out_path, tune_x[:SENSITIVITY_IMAGES])
    outcome.first_divergence = first_divergence(outcome.sensitivity)
    outcome.seconds = time.perf_counter() - start
    return outcome
