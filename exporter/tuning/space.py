"""The search space: which recipe knobs a trial draws, from the ``[tune]`` recipe section.

A trial's parameters become ``--set`` overrides, so every trial is a recipe that
``edgepack run`` takes as it is (and ``best.toml`` writes down).
"""

from __future__ import annotations

import json

import optuna

from exporter.recipe import TuneSpec

OBJECTIVES = ("size", "latency", "instructions")

# Per objective, the knobs that change the *model*: bytes come from zeros (stored sparse in
# blocks) and latency and instructions from fewer channels (dense kernels do the same work on
# zeros). Precision and storage are not drawn by default: a trial writes every precision and
# storage the target's recipe asks for and its candidate is the best of them within budgets,
# which a draw could only match at a trial's cost (a dense file never beats its sparse twin on
# size, since the sparse copy is written beside it). Augmentation is searched, not assumed: long
# fine-tuning of a pruned CIFAR seed CNN without it overfits (80 % sparse in 1x16 blocks, 20
# epochs: +3.05 points drop; with it: -0.40), and on digits it hurts.
DEFAULT_KNOBS = {
    "size": (
        "compress.prune.sparsity",
        "compress.prune.block",
        "compress.finetune.epochs",
        "compress.finetune.augment",
    ),
    "latency": (
        "compress.channels.ratio",
        "compress.finetune.epochs",
        "compress.finetune.augment",
    ),
    "instructions": (
        "compress.channels.ratio",
        "compress.finetune.epochs",
        "compress.finetune.augment",
    ),
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
        return ("compress.channels.ratio", "compress.finetune.epochs", "compress.finetune.augment")
    return DEFAULT_KNOBS[objective]


def fixed_sets(
    spec: TuneSpec, objective: str, device: str, overrides: list[str] | tuple[str, ...]
) -> list[str]:
    """Overrides every trial of the default space carries. Where the objective's knobs leave
    magnitude pruning out (latency, instructions, microcontrollers), the target recipe's own
    unstructured sparsity (x86_64 prunes 75 %) would only cost accuracy: dense kernels do the
    same work on zeros. It is turned off unless the user's --set names it or tune.params is
    given (then the user chose the space)."""
    knob = "compress.prune.sparsity"
    if spec.params or knob in knobs(spec, objective, device):
        return []
    if any(o.split("=", 1)[0].strip() == knob for o in overrides):
        return []
    return [f"{knob}=0.0"]


def _toml(value: object) -> str:
    """A --set value as TOML (strings quoted, lists bracketed)."""
    return json.dumps(value)


def describe(spec: TuneSpec, objective: str, device: str = "local") -> str:
    """The search space as one line: a study resumed or joined with another one (other knobs,
    ranges or scales) is refused, since Optuna cannot mix two distributions of one knob."""
    chosen = knobs(spec, objective, device)
    ranges = {
        "compress.prune.sparsity": spec.sparsity,
        "compress.channels.ratio": spec.channel_ratio,
        "compress.finetune.epochs": [*spec.epochs, "log" if spec.epochs[0] >= 1 else "linear"],
        "compress.prune.block": spec.block_cols,
        "precision": spec.precisions,
        "export.storage": spec.storage,
        "quantize.method": spec.methods,
        "compress.finetune.augment": [False, True],
    }
    return json.dumps({k: ranges[k] for k in chosen})


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
            # A trial costs about its epochs: drawn on a log scale from 1 up, so short ones
            # are tried more often than long ones.
            sets.append(f"{knob}={trial.suggest_int(knob, lo, hi, log=lo >= 1)}")
        elif knob == "compress.prune.block":
            cols = trial.suggest_categorical(knob, [f"1x{c}" for c in spec.block_cols])
            sets.append(f"{knob}=[1, {int(cols.split('x')[1])}]")
        elif knob == "precision":
            precision = trial.suggest_categorical(knob, list(spec.precisions))
            sets.append(f"export.precisions={_toml([precision])}")
        elif knob == "export.storage":
            storage = trial.suggest_categorical(knob, list(spec.storage))
            sets.append(f"{knob}={_toml(['dense'] if storage == 'dense' else ['dense', 'sparse'])}")
    # Knobs that only matter given others are drawn after them all, whatever their order:
    # augmentation only where something is fine-tuned, so a trial without fine-tuning does not
    # spend the sampler's attention on it ...
    epochs = trial.params.get("compress.finetune.epochs", 1)
    if "compress.finetune.augment" in chosen and epochs > 0:
        augment = trial.suggest_categorical("compress.finetune.augment", [False, True])
        sets.append(f"compress.finetune.augment={_toml(augment)}")
    # ... and calibration only where something is calibrated (int8 / int16x8 trials).
    precision = trial.params.get("precision")
    quantized = precision in ("int8", "int16x8") or "precision" not in chosen
    if "quantize.method" in chosen and quantized:
        method = trial.suggest_categorical("quantize.method", list(spec.methods))
        sets.append(f"quantize.method={_toml(method)}")
    return sets
