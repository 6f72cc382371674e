"""Target recipes: TOML files in ``targets/`` loaded into validated frozen dataclasses.

Every key is declared once, in the dataclasses below, with its type and allowed values; the
loader walks the TOML against them so an unknown key, a wrong type or a value out of range is
an error that names the file, the key and what is allowed. Documented in docs/recipes.md.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

from exporter.errors import RecipeError


def _targets_dir() -> Path:
    """The recipes: ``targets/`` beside the package in a source checkout (``make``'s editable
    install), else where a wheel installs them (``share/edgepack/targets`` under the prefix)."""
    source = Path(__file__).resolve().parent.parent / "targets"
    if source.is_dir():
        return source
    return Path(sys.prefix) / "share" / "edgepack" / "targets"


TARGETS_DIR = _targets_dir()


def _spec(
    default: Any = None,
    *,
    choices: tuple | None = None,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
    doc: str = "",
):
    """A recipe field: its default, allowed values and one line of documentation."""
    meta = {
        "choices": choices,
        "lo": lo,
        "hi": hi,
        "lo_open": lo_open,
        "hi_open": hi_open,
        "doc": doc,
    }
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DeviceSpec:
    kind: str = _spec(
        "local",
        choices=("local", "qemu", "ssh", "tflm"),
        doc="where artifacts run: this machine, ARM64 under QEMU, a host over SSH, or "
        "TensorFlow Lite Micro's kernels on this machine (microcontroller targets)",
    )
    cpu: str | None = _spec(
        None,
        doc="QEMU CPU model: cortex-a53, cortex-a72, cortex-a76 or "
        "neoverse-n1 (never max); informational for local/ssh",
    )
    host: str | None = _spec(None, doc="user@host[:port] for ssh targets (--host overrides it)")
    python: str = _spec(
        "python3",
        doc="python interpreter on an ssh device (qemu targets use the sysroot's python3.11)",
    )
    ssh_options: list[str] = _spec(
        [],
        doc='extra ssh arguments, e.g. ["-F", "my_ssh_config"]; '
        "$EDGEPACK_SSH_OPTIONS (shell words) is appended",
    )
    connect_timeout_s: float = _spec(10.0, lo=0.0, lo_open=True, hi=600.0, doc="ssh ConnectTimeout")
    timeout_s: float = _spec(
        1800.0, lo=0.0, lo_open=True, doc="wall-clock limit of one runtime_check run on the device"
    )


@dataclass(frozen=True)
class RuntimeSpec:
    runtimes: list[str] = _spec(
        ["onnxruntime", "litert"],
        choices=("onnxruntime", "litert", "tflm"),
        doc="runtimes used to validate artifacts (tflm: TensorFlow Lite Micro, for "
        "device.kind = tflm only)",
    )
    threads: int = _spec(1, lo=1, hi=256, doc="intra-op threads for every runtime")
    warmup: int = _spec(10, lo=0, hi=100000, doc="untimed runs before latency is measured")
    runs: int = _spec(100, lo=1, hi=1000000, doc="timed batch-1 runs for p50/p90/mean")
    delegate: str = _spec(
        "xnnpack",
        choices=("xnnpack", "none"),
        doc="LiteRT: default XNNPACK delegate, or builtin kernels only",
    )


#: Every precision ``export.precisions`` may name, in the order artifacts are written.
PRECISIONS = ("fp32", "fp16", "dynamic", "int8", "int16x8")


@dataclass(frozen=True)
class ExportSpec:
    formats: list[str] = _spec(
        ["onnx", "tflite"], choices=("onnx", "tflite"), doc="artifact formats to write"
    )
    opset: int = _spec(18, lo=17, hi=23, doc="ONNX opset")
    input_layout: str = _spec(
        "nhwc",
        choices=("nhwc", "nchw"),
        doc="TFLite input layout (nchw adds one boundary TRANSPOSE)",
    )
    precisions: list[str] = _spec(
        ["fp32"],
        choices=PRECISIONS,
        doc="precisions to write for every format: fp32 (the reference); fp16 (float16 "
        "weights, half the size, no calibration: phone GPUs); dynamic (int8 weights, float "
        "activations, no calibration data: 4x smaller, CPU); int8 (calibrated full integer: "
        "smallest and fastest on CPUs and NPUs); int16x8 (int16 activations, int8 weights: "
        "when int8 activations cost accuracy)",
    )
    storage: list[str] = _spec(
        ["dense"],
        choices=("dense", "sparse"),
        doc="sparse: also write a copy with pruned weights stored "
        "sparse, for each tensor only where that is smaller",
    )


@dataclass(frozen=True)
class QuantizeSpec:
    calibration_samples: int = _spec(
        256, lo=1, hi=100000, doc="training images used to calibrate activation ranges"
    )
    method: str = _spec(
        "minmax", choices=("minmax", "entropy", "percentile"), doc="calibration method tried first"
    )
    fallback_methods: list[str] = _spec(
        ["percentile", "entropy"],
        choices=("minmax", "entropy", "percentile"),
        doc="tried in order when int8 loses more than max_drop",
    )
    max_drop: float = _spec(
        0.3,
        lo=0.0,
        doc="points int8 may lose against the fp32 artifact (on tuning "
        "images) before fallbacks are tried",
    )
    max_float_layers: int = _spec(
        2, lo=0, hi=1000, doc="most sensitive layers that may be left in float to meet the budget"
    )
    tuning_samples: int = _spec(
        1000,
        lo=1,
        doc="training images (not the eval set) on which int8 variants "
        "are compared while searching",
    )
    tuning_gmacs: float = _spec(
        1000.0,
        lo=0.0,
        lo_open=True,
        doc="at most this many GMACs (1e9 multiply-accumulates) in one pass over the tuning "
        "images: a large net is tuned on fewer images (never fewer than 250; ResNet-50 at "
        "224x224, 4.1 GMACs: 250), so the search's passes do not outweigh the rest of the run",
    )
    reduce_range: str = _spec(
        "auto",
        choices=("auto", "on", "off"),
        doc="7-bit weights for the ONNX artifact; auto = on for x86 CPUs "
        "without VNNI, whose int8 kernels saturate",
    )
    per_channel: bool = _spec(True, doc="per-output-channel weight scales")
    qat_epochs: int = _spec(
        0,
        lo=0,
        hi=1000,
        doc="quantization-aware fine-tuning epochs, tried when int8 still "
        "misses max_drop after the calibration methods and float "
        "layers (needs the torch model and training data)",
    )
    qat_lr: float = _spec(0.001, lo=0.0, lo_open=True, doc="SGD learning rate of QAT")
    tflite_io: str = _spec(
        "float32",
        choices=("float32", "int8", "uint8"),
        doc="int8 TFLite model input/output: float32 (quantize inside), "
        "int8, or uint8 raw camera pixels (normalization folded in)",
    )


@dataclass(frozen=True)
class PruneSpec:
    sparsity: float | None = _spec(
        None, lo=0.0, hi=1.0, hi_open=True, doc="fraction of prunable weights set to zero (by |w|)"
    )
    threshold: float | None = _spec(None, lo=0.0, doc="zero every weight with |w| below this")
    scope: str = _spec(
        "global",
        choices=("global", "layer"),
        doc="rank |w| across all prunable layers, or within each layer",
    )
    exclude: list[str] = _spec(
        ["first_conv", "last_fc"], doc="layers left dense: module names or first_conv / last_fc"
    )
    schedule: str = _spec(
        "gradual",
        choices=("gradual", "oneshot"),
        doc="gradual: Zhu & Gupta cubic ramp during fine-tuning",
    )
    block: list[int] = _spec(
        [1, 1],
        lo=1,
        hi=64,
        doc="[rows, cols]: prune fully-connected weights in whole blocks "
        "(in the TFLite weight layout); [1, 1] is unstructured. "
        "TFLite's sparse FC kernels use [1, 4] (float32) and [1, 16] "
        "(int8) blocks",
    )


@dataclass(frozen=True)
class ChannelSpec:
    ratio: float | None = _spec(
        None,
        lo=0.0,
        hi=1.0,
        hi_open=True,
        doc="fraction of channels physically removed (structured pruning)",
    )
    scope: str = _spec(
        "global",
        choices=("global", "layer"),
        doc="rank channel groups across the network, or the same ratio per layer",
    )
    importance: str = _spec(
        "l1",
        choices=("l1", "l2", "bn"),
        doc="channel importance: weight L1/L2 norm, or BatchNorm scale",
    )
    round_to: int = _spec(
        8, lo=1, hi=256, doc="keep channel counts multiples of this (SIMD-friendly)"
    )


@dataclass(frozen=True)
class FinetuneSpec:
    epochs: int = _spec(0, lo=0, hi=1000, doc="fine-tuning epochs after/while compressing")
    lr: float = _spec(0.01, lo=0.0, lo_open=True, doc="SGD learning rate")
    batch_size: int = _spec(64, lo=1, hi=65536, doc="training batch size")
    seed: int = _spec(0, lo=0, doc="seed for shuffling and initialisation")
    augment: bool = _spec(
        False,
        doc="random crop + horizontal flip while fine-tuning (natural "
        "images; keep off for digits or text)",
    )
    samples: int = _spec(
        0,
        lo=0,
        doc="training images one fine-tune (and QAT) epoch draws: a fresh seeded random draw "
        "of the training split each epoch; 0: all of them. Shortens fine-tuning of large nets "
        "(an `edgepack tune` trial)",
    )


@dataclass(frozen=True)
class RoundSpec:
    step: float | None = _spec(
        None,
        lo=0.0,
        lo_open=True,
        doc="grid step alpha: w <- round(w / alpha) * alpha, for every conv and "
        "fully-connected weight (prune.exclude does not apply)",
    )
    bits: int | None = _spec(None, lo=2, hi=16, doc="per-layer alpha = max|w| / (2^(bits-1) - 1)")


@dataclass(frozen=True)
class CompressSpec:
    channels: ChannelSpec = field(default_factory=ChannelSpec)
    prune: PruneSpec = field(default_factory=PruneSpec)
    finetune: FinetuneSpec = field(default_factory=FinetuneSpec)
    round: RoundSpec = field(default_factory=RoundSpec)


@dataclass(frozen=True)
class EvalSpec:
    samples: int = _spec(2000, lo=1, doc="at most this many eval images are validated")
    holdout: float = _spec(
        0.2,
        lo=0.0,
        hi=1.0,
        lo_open=True,
        hi_open=True,
        doc="fraction of --data held out when --eval-data is not given",
    )
    seed: int = _spec(0, lo=0, doc="seed of the stratified hold-out split")


@dataclass(frozen=True)
class BudgetSpec:
    max_accuracy_drop: float = _spec(1.0, lo=0.0, doc="points of top-1 below the original model")
    min_agreement: float | None = _spec(
        None, lo=0.0, hi=1.0, doc="fraction of top-1 equal to the original model"
    )
    max_latency_p90_ms: float | None = _spec(None, lo=0.0, lo_open=True, doc="p90 batch-1 latency")
    max_bytes: int | None = _spec(None, lo=1, doc="artifact file size")
    max_arena_bytes: int | None = _spec(
        None,
        lo=1,
        doc="tflm targets: the smallest tensor arena the model runs in (the RAM TFLM needs "
        "besides the application's)",
    )
    max_flash_bytes: int | None = _spec(
        None,
        lo=1,
        doc="tflm targets: the model's bytes in flash (code size of TFLM and the application "
        "not included)",
    )


#: The recipe knobs `edgepack tune` can search (``tune.params``); ``precision`` is
#: ``export.precisions`` set to one precision.
TUNE_KNOBS = (
    "compress.prune.sparsity",
    "compress.prune.block",
    "compress.channels.ratio",
    "compress.finetune.epochs",
    "compress.finetune.augment",
    "precision",
    "quantize.method",
    "export.storage",
)


@dataclass(frozen=True)
class TuneSpec:
    params: list[str] = _spec(
        [],
        choices=TUNE_KNOBS,
        doc="`edgepack tune`: the knobs searched; empty: the objective's defaults (size: "
        "compress.prune.sparsity, compress.prune.block, compress.finetune.epochs, "
        "compress.finetune.augment; latency, instructions and microcontroller targets: "
        "compress.channels.ratio, compress.finetune.epochs, compress.finetune.augment, "
        "with compress.prune.sparsity = 0 unless --set names it: zeros do not make dense "
        "kernels faster). "
        "Without precision and export.storage among them, a trial writes every precision "
        "and storage of the target's recipe and is scored by the best artifact",
    )
    sparsity: list[float] = _spec(
        [0.5, 0.95], lo=0.0, hi=1.0, hi_open=True, doc="[low, high] of compress.prune.sparsity"
    )
    block_cols: list[int] = _spec(
        [1, 4, 16],
        lo=1,
        hi=64,
        doc="compress.prune.block candidates [1, cols] (TFLite's sparse FC kernels: 4 float32, "
        "16 int8)",
    )
    channel_ratio: list[float] = _spec(
        [0.0, 0.6], lo=0.0, hi=1.0, hi_open=True, doc="[low, high] of compress.channels.ratio"
    )
    epochs: list[int] = _spec(
        [1, 20],
        lo=0,
        hi=1000,
        doc="[low, high] of compress.finetune.epochs (drawn on a log scale: short trials are "
        "tried more often)",
    )
    precisions: list[str] = _spec(
        ["fp32", "int8"], choices=PRECISIONS, doc="candidates of `precision`"
    )
    methods: list[str] = _spec(
        ["minmax", "percentile", "entropy"],
        choices=("minmax", "entropy", "percentile"),
        doc="candidates of quantize.method",
    )
    storage: list[str] = _spec(
        ["dense", "sparse"],
        choices=("dense", "sparse"),
        doc="candidates of export.storage (sparse: a sparse-stored copy beside the dense one)",
    )
    formats: list[str] = _spec(
        ["tflite"],
        choices=("onnx", "tflite"),
        doc="export.formats of every trial (fewer formats: faster trials)",
    )
    samples: int = _spec(
        2000,
        lo=2,
        doc="images of the tuning split trials are scored on: seeded, stratified, carved from "
        "the eval images (hold-out of --data, or --eval-data) that `edgepack run` does not "
        "validate on (beyond eval.samples); the front and best/ are validated on the ones it "
        "does. With no more eval images than eval.samples, at most half of them, and the "
        "front on the others. Trials train on what `edgepack run` trains on",
    )
    seed: int = _spec(0, lo=0, doc="seed of the tuning split and of the sampler")
    sampler: str = _spec(
        "tpe",
        choices=("tpe", "nsga2", "random"),
        doc="Optuna sampler: multi-objective TPE, NSGA-II, or random search",
    )
    startup_trials: int = _spec(
        6, lo=1, hi=10000, doc="TPE: random trials before the model-based search"
    )
    prune_margin: float = _spec(
        5.0,
        lo=0.0,
        doc="points beyond budgets.max_accuracy_drop at which a trial's fine-tuning is stopped "
        "after its first epoch (tuning split)",
    )
    front_max: int = _spec(
        6, lo=1, hi=1000, doc="Pareto-front trials rebuilt and validated on the eval data"
    )
    heartbeat_s: float = _spec(
        10.0,
        lo=0.0,
        lo_open=True,
        hi=3600.0,
        doc="a trial whose process sends no heartbeat for 2x this is marked FAIL (and retried once)",
    )


@dataclass(frozen=True)
class Recipe:
    name: str = _spec("custom", doc="set from the file name")
    description: str = _spec("", doc="one line shown by `edgepack targets`")
    device: DeviceSpec = field(default_factory=DeviceSpec)
    runtime: RuntimeSpec = field(default_factory=RuntimeSpec)
    export: ExportSpec = field(default_factory=ExportSpec)
    compress: CompressSpec = field(default_factory=CompressSpec)
    quantize: QuantizeSpec = field(default_factory=QuantizeSpec)
    eval: EvalSpec = field(default_factory=EvalSpec)
    budgets: BudgetSpec = field(default_factory=BudgetSpec)
    tune: TuneSpec = field(default_factory=TuneSpec)
    source: str = _spec("", doc="file the recipe came from (set by the loader)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Keys the loader sets itself; a user may not write them.
_INTERNAL = {"name", "source"}


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _check_scalar(value: Any, tp: Any, where: str, meta: dict) -> Any:
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
        # TOML has nan and inf; every comparison with NaN is false, so no range would catch it.
        if ok and not math.isfinite(value):
            raise RecipeError(f"{where}: {value!r} is not a finite number")
    elif tp is str:
        ok = isinstance(value, str)
    else:  # pragma: no cover - a declaration bug, not user input
        raise TypeError(tp)
    if not ok:
        raise RecipeError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    choices = meta.get("choices")
    if choices and value not in choices:
        raise RecipeError(f"{where}: {value!r} is not one of {', '.join(map(str, choices))}")
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and (value < lo or (meta.get("lo_open") and value == lo)):
        bound = ">" if meta.get("lo_open") else ">="
        raise RecipeError(f"{where}: {value!r} is out of range (must be {bound} {lo})")
    if hi is not None and (value > hi or (meta.get("hi_open") and value == hi)):
        bound = "<" if meta.get("hi_open") else "<="
        raise RecipeError(f"{where}: {value!r} is out of range (must be {bound} {hi})")
    return value


# Where a key's value came from: a recipe file, or the command line's --set.
SET = "--set"


def _at(where: str, key: str) -> str:
    """``file:section.key`` for a recipe file, ``--set section.key`` for an override."""
    return f"{SET} {key}" if where == SET else f"{where}:{key}"


def _build(cls: type, data: dict, where: str, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    allowed = [n for n in fields if n not in _INTERNAL]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = _at(where, prefix + key)
        if key not in fields or key in _INTERNAL:
            raise RecipeError(f"{path}: unknown key '{key}' (allowed: {', '.join(allowed)})")
        tp, _optional = _unwrap_optional(hints[key])
        meta = fields[key].metadata
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise RecipeError(f"{path}: expected a [section], got {value!r}")
            kwargs[key] = _build(tp, value, where, f"{prefix}{key}.")
        elif typing.get_origin(tp) is list:
            (item_tp,) = typing.get_args(tp)
            if not isinstance(value, list):
                raise RecipeError(f"{path}: expected a list, got {value!r}")
            kwargs[key] = [_check_scalar(v, item_tp, path, meta) for v in value]
        else:
            kwargs[key] = _check_scalar(value, tp, path, meta)
    return cls(**kwargs)


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def is_recipe_path(text: str) -> bool:
    """A recipe given by path ends in ``.toml`` or holds a path separator; a bare word is a
    built-in target name, whatever the working directory holds (a folder ``./x86_64`` too)."""
    separators = {"/", os.sep, os.altsep} - {None}
    return text.endswith(".toml") or any(sep in text for sep in separators)


def resolve_target(name_or_path: str) -> Path:
    """A built-in target name (``x86_64``) or a path to a TOML file (see :func:`is_recipe_path`)."""
    if is_recipe_path(name_or_path):
        candidate = Path(name_or_path)
        if not candidate.is_file():
            state = "is not a file" if candidate.exists() else "not found"
            raise RecipeError(f"recipe file {candidate} {state}")
        return candidate
    builtin = TARGETS_DIR / f"{name_or_path}.toml"
    if not builtin.is_file():
        known = ", ".join(available_targets()) or "none"
        raise RecipeError(
            f"unknown target '{name_or_path}' (known: {known}; a recipe file is given by a "
            "path ending in .toml or containing '/')"
        )
    return builtin


def available_targets() -> list[str]:
    return sorted(p.stem for p in TARGETS_DIR.glob("*.toml"))


def _read_toml(path: Path) -> dict:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{path}: not valid TOML ({exc})") from None
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read ({exc.strerror})") from None


def _load_raw(path: Path, seen: tuple[Path, ...]) -> dict:
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(p.stem for p in (*seen, path))
        raise RecipeError(f"{path}: 'extends' cycle ({chain})")
    data = _read_toml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise RecipeError(f"{path}:extends: expected a target name or path, got {parent!r}")
    if is_recipe_path(parent):  # a path is relative to the file that extends it
        parent = str(path.parent / parent)
    base = _load_raw(resolve_target(parent), (*seen, path))
    return _deep_merge(base, data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``section.key=value`` -> (["section", "key"], value); the value is read as TOML."""
    if "=" not in text:
        raise RecipeError(f"--set {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    parts = [p.strip() for p in key.strip().split(".") if p.strip()]
    if not parts:
        raise RecipeError(f"--set {text!r}: empty key")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()  # a bare word such as `layer` is taken as a string
    return parts, value


def load_recipe(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Load, merge ``extends`` chains and ``--set`` overrides, and validate."""
    path = resolve_target(name_or_path)
    data = _load_raw(path, ())
    _build(Recipe, data, str(path))  # the file alone first: its own mistakes name the file
    set_keys: set[str] = set()
    for text in overrides:
        parts, value = parse_override(text)
        patch: dict = {parts[-1]: value}
        for part in reversed(parts[:-1]):
            patch = {part: patch}
        _build(Recipe, patch, SET)  # each override alone: a typo names --set, not the file
        set_keys.update(".".join(parts[: i + 1]) for i in range(len(parts)))
        data = _deep_merge(data, patch)
    recipe = _build(Recipe, data, str(path))

    def blame(key: str) -> str:
        """Where a rule across keys failed: the --set that wrote the key, else the file."""
        return _at(SET if key in set_keys else str(path), key)

    prune = recipe.compress.prune
    if prune.sparsity is not None and prune.threshold is not None:
        raise RecipeError(f"{blame('compress.prune')}: set either sparsity or threshold, not both")
    if len(prune.block) != 2:
        raise RecipeError(
            f"{blame('compress.prune.block')}: expected [rows, cols], got {prune.block}"
        )
    rnd = recipe.compress.round
    if rnd.step is not None and rnd.bits is not None:
        raise RecipeError(f"{blame('compress.round')}: set either step or bits, not both")
    _check_device(recipe, blame)
    _check_tune(recipe.tune, blame)
    return dataclasses.replace(recipe, name=path.stem, source=str(path))


def _check_tune(tune: TuneSpec, blame: Callable[[str], str]) -> None:
    """Ranges are [low, high]; candidate lists are not empty."""
    for key in ("sparsity", "channel_ratio", "epochs"):
        value = getattr(tune, key)
        if len(value) != 2 or value[0] > value[1]:
            raise RecipeError(f"{blame('tune.' + key)}: expected [low, high], got {value}")
    for key in ("block_cols", "precisions", "methods", "storage", "formats"):
        if not getattr(tune, key):
            raise RecipeError(f"{blame('tune.' + key)}: needs at least one candidate")


def _check_tflm(recipe: Recipe, blame: Callable[[str], str]) -> None:
    """A microcontroller runs one full-int8 .tflite from flash: TFLM has no ONNX runtime, reads
    no sparse tensors, and the boards' kernel builds (CMSIS-NN, ESP-NN) are int8 only."""
    dev_tflm = recipe.device.kind == "tflm"
    uses_tflm = "tflm" in recipe.runtime.runtimes
    if not dev_tflm:
        if uses_tflm:
            raise RecipeError(
                f"{blame('runtime.runtimes')}: tflm validates device.kind = 'tflm' targets only"
            )
        for key in ("max_arena_bytes", "max_flash_bytes"):
            if getattr(recipe.budgets, key) is not None:
                raise RecipeError(
                    f"{blame('budgets.' + key)}: only a device.kind = 'tflm' target measures it"
                )
        return
    rules = [
        ("runtime.runtimes", recipe.runtime.runtimes == ["tflm"], 'must be ["tflm"]'),
        ("export.formats", recipe.export.formats == ["tflite"], 'must be ["tflite"]'),
        (
            "export.precisions",
            recipe.export.precisions == ["int8"],
            'must be ["int8"]: the boards\' TFLM kernels are int8',
        ),
        (
            "export.storage",
            "sparse" not in recipe.export.storage,
            "must be dense: TFLM reads no sparse tensors",
        ),
        (
            "quantize.max_float_layers",
            recipe.quantize.max_float_layers == 0,
            "must be 0: a layer left in float has no int8 kernel on the board",
        ),
        (
            "budgets.max_latency_p90_ms",
            recipe.budgets.max_latency_p90_ms is None,
            "must be unset: TFLM's reference kernels on this machine say nothing of the "
            "board's latency",
        ),
    ]
    for key, ok, why in rules:
        if not ok:
            raise RecipeError(f"{blame(key)}: a tflm target {why}")


def _check_device(recipe: Recipe, blame: Callable[[str], str]) -> None:
    """Rules that span keys: a QEMU target needs a CPU model whose results are right; a TFLM
    target a model a microcontroller can run."""
    from runtime_check.qemu import CPU_MODELS

    _check_tflm(recipe, blame)
    dev = recipe.device
    if dev.kind != "qemu":
        return
    known = ", ".join(CPU_MODELS)
    cpu = blame("device.cpu")
    if dev.cpu is None:
        raise RecipeError(f"{cpu}: a qemu target needs a CPU model ({known})")
    if dev.cpu.split(",")[0] == "max":
        raise RecipeError(
            f"{cpu}: 'max' is refused: QEMU's max CPU computes wrong "
            f"XNNPACK int8 results; name the target's core ({known})"
        )
    if dev.cpu not in CPU_MODELS:
        raise RecipeError(f"{cpu}: {dev.cpu!r} is not a supported QEMU CPU model (one of: {known})")
    if recipe.budgets.max_latency_p90_ms is not None:
        raise RecipeError(
            f"{blame('budgets.max_latency_p90_ms')}: latency under QEMU is emulated "
            "(~200x native, kernels not ranked right) and cannot hold a budget; "
            "leave it unset for qemu targets"
        )


def describe_fields(cls: type = Recipe, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, doc) for every user key: the source of docs/recipes.md."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in _INTERNAL:
            continue
        tp, _ = _unwrap_optional(hints[f.name])
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            rows.extend(describe_fields(tp, key + "."))
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        meta = f.metadata
        doc = meta.get("doc", "")
        if meta.get("choices"):
            doc += f" (one of: {', '.join(meta['choices'])})"
        bounds = []
        if meta.get("lo") is not None:
            bounds.append(f"{'>' if meta.get('lo_open') else '>='} {meta['lo']}")
        if meta.get("hi") is not None:
            bounds.append(f"{'<' if meta.get('hi_open') else '<='} {meta['hi']}")
        if bounds:
            doc += f" ({', '.join(bounds)})"
        tname = getattr(tp, "__name__", str(tp))
        if typing.get_origin(tp) is list:
            tname = f"list[{typing.get_args(tp)[0].__name__}]"
        rows.append((key, tname, "unset" if default is None else repr(default), doc))
    return rows
