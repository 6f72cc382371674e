"""The search space: which recipe knobs a trial draws, from the ``[tune]`` recipe section.

A trial's parameters become ``--set`` overrides, so every trial is a recipe that
``edgepack run`` takes as it is (and ``best.toml`` writes down).
"""

from __future__ import annotations

import json

import optuna

from exporter.recipe import TuneSpec

OBJECTIVES = ("size", "latency", "instructions")

# Per objective, what moves the figure: bytes come from zeros stored sparse and 8-bit weights;
# latency and instructions from fewer channels (dense kernels do the same work on zeros).
DEFAULT_KNOBS = {
    "size": (
        "compress.prune.sparsity",
        "compress.prune.block",
        "compress.finetune.epochs",
        "precision",
        "export.storage",
    ),
    "latency": ("compress.channels.ratio", "compress.finetune.epochs", "precision"),
    "instructions": ("compress.channels.ratio", "compress.finetune.epochs", "precision"),
}

# Continuous knobs are drawn on a grid: a recipe reads 0.85, not 0.8473921.
FLOAT_STEP = 0.05


# A microcontroller target runs one dense full-int8 model (recipe.py refuses anything else).
FIXED_ON_TFLM = ("precision", "export.storage")


def knobs(spec: TuneSpec, objective: str, device: str = "local") -> tuple[str, ...]:
    if spec.params:
        return tuple(spec.params)
    if device == "tflm":
        # Dense storage only: zeros do not shrink the flash image, fewer channels do.
        return ("compress.channels.ratio", "compress.finetune.epochs")
    return DEFAULT_KNOBS[objective]


def _toml(value: object) -> str:
    """A --set value as TOML (strings quoted, lists bracketed)."""
    return json.dumps(value)


def suggest(
    trial: optuna.Trial, spec: TuneSpec, objective: str, device: str = "local"
) -> list[str]:
    """Draw this trial's knobs; returns them as ``--set`` overrides, in knob order."""
    sets: list[str] = []
    chosen = knobs(spec, objective, device)
    for knob in chosen:
        if knob == "compress.prune.sparsity":
            lo, hi = spec.sparsity
            value = trial.suggest_float(knob, lo, hi, step=FLOAT_STEP) if hi > lo else lo
            sets.append(f"{knob}={round(value, 4)}")
        elif knob == "compress.channels.ratio":
            lo, hi = spec.channel_ratio
            value = trial.suggest_float(knob, lo, hi, step=FLOAT_STEP) if hi > lo else lo
            sets.append(f"{knob}={round(value, 4)}")
        elif knob == "compress.finetune.epochs":
            lo, hi = spec.epochs
            sets.append(f"{knob}={trial.suggest_int(knob, lo, hi)}")
        elif knob == "compress.prune.block":
            cols = trial.suggest_categorical(knob, [f"1x{c}" for c in spec.block_cols])
            sets.append(f"{knob}=[1, {int(cols.split('x')[1])}]")
        elif knob == "precision":
            precision = trial.suggest_categorical(knob, list(spec.precisions))
            sets.append(f"export.precisions={_toml([precision])}")
        elif knob == "export.storage":
            storage = trial.suggest_categorical(knob, list(spec.storage))
            sets.append(f"{knob}={_toml(['dense'] if storage == 'dense' else ['dense', 'sparse'])}")
    # Calibration only matters where something is calibrated: drawn for int8 / int16x8 trials
    # alone, so a float trial does not spend the sampler's attention on it.
    precision = trial.params.get("precision")
    quantized = precision in ("int8", "int16x8") or "precision" not in chosen
    if "quantize.method" in chosen and quantized:
        method = trial.suggest_categorical("quantize.method", list(spec.methods))
        sets.append(f"quantize.method={_toml(method)}")
    return sets
