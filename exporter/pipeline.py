"""The one-shot pipeline: model -> compress -> ONNX fp32 -> TFLite fp32 -> validate -> report.

Each stage is a function from files to files; this module only sequences them and builds
the output directory atomically (nothing appears under --out unless the run completes).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from exporter import __version__
from exporter.artifacts import Artifact, save_manifest
from exporter.common.atomic import atomic_dir
from exporter.common.progress import Progress, make_progress, stderr_console
from exporter.compress import compress
from exporter.errors import DataError
from exporter.inputs.data import check_fits
from exporter.inputs.prepare import (
    build_torch_model,
    check_model_output,
    resolve_normalization,
    split_data,
)
from exporter.models.complexity import count_params_macs
from exporter.models.zoo import BUILTIN
from exporter.onnx.export import export_onnx, load_onnx, onnx_input_shape, onnx_logits
from exporter.onnx.sparse import sparsify_onnx
from exporter.quantize import QuantOutcome, quantize_stage
from exporter.quantize.onnx_int8 import calibration_cache, quantize_onnx
from exporter.quantize.qat import qat_finetune
from exporter.recipe import Recipe, load_recipe
from exporter.report.build import build_report, print_table, write_report
from exporter.report.html import write_html
from exporter.targets.validate import EVAL_BATCH, make_runner, validate
from exporter.training.loop import TrainConfig, accuracy, predict
from runtime_check.cpu import describe_cpu

ONNX_FP32 = "model.fp32.onnx"
ONNX_INT8 = "model.int8.onnx"
TFLITE_FP32 = "model.fp32.tflite"
TFLITE_INT8 = "model.int8.tflite"
REPORT = "report.json"


@dataclass(frozen=True)
class RunOptions:
    model: str
    out: Path
    weights: str | None = None
    data: str = "digits"
    eval_data: str | None = None
    target: str = "x86_64"
    overrides: tuple[str, ...] = ()
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    force: bool = False
    quiet: bool = False


@dataclass
class RunResult:
    report: dict
    out: Path
    artifacts: list[Artifact] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.report["passed"])


def _check_onnx_fits(path: Path, chw: tuple[int, int, int]) -> None:
    dims, _ = onnx_input_shape(load_onnx(path))
    tail = tuple(dims[1:])
    if len(dims) != 4 or any(not isinstance(d, int) for d in tail) or tail != chw:
        c, h, w = chw
        raise DataError(f"{path} takes input {dims} but the data is [N,{c},{h},{w}]")


def _check_labels(splits, chw: tuple[int, int, int], num_classes: int) -> None:
    check_fits(splits.eval, chw, num_classes)
    check_fits(splits.train, chw, num_classes)


def _compress_and_export(
    module, recipe: Recipe, splits, norm, eval_x: np.ndarray, tmp: Path, progress: Progress
) -> tuple[dict, nn.Module]:
    """Compress a copy of the model, export it to ONNX fp32 and check the export's parity;
    returns the report's sections and the compressed module."""
    compressed = copy.deepcopy(module)
    train_x = norm.apply(splits.train.images) if recipe.compress.finetune.epochs else None
    comp = compress(
        compressed,
        recipe.compress,
        train_x,
        splits.train.labels,
        input_shape=splits.eval.image_shape,
        progress=progress,
    )
    comp_logits = predict(compressed, eval_x)
    task = progress.add_task("export ONNX", total=1)
    export_onnx(compressed, splits.eval.image_shape, tmp / ONNX_FP32, opset=recipe.export.opset)
    exported = onnx_logits(tmp / ONNX_FP32, eval_x[:64])
    progress.update(task, advance=1)
    params, macs = count_params_macs(compressed, splits.eval.image_shape)
    return {
        "compression": {
            **comp.to_dict(),
            "params": params,
            "macs": macs,
            "torch_accuracy": accuracy(comp_logits, splits.eval.labels),
        },
        "export": {"onnx_vs_torch_max_abs_diff": float(np.abs(exported - comp_logits[:64]).max())},
    }, compressed


def _quantization_images(recipe: Recipe, splits, norm) -> tuple[np.ndarray, ...]:
    """Calibration and tuning images, both from the training split (never the eval set)."""
    q = recipe.quantize
    rng = np.random.default_rng(recipe.eval.seed)
    order = rng.permutation(len(splits.train))
    calib_idx = np.sort(order[: q.calibration_samples])
    tune_idx = np.sort(order[q.calibration_samples : q.calibration_samples + q.tuning_samples])
    if len(tune_idx) == 0:  # tiny data: tune on the calibration images rather than not at all
        tune_idx = calib_idx
    return (
        norm.apply(splits.train.images[calib_idx]),
        norm.apply(splits.train.images[tune_idx]),
        splits.train.labels[tune_idx],
    )


def _quantize(tmp: Path, recipe: Recipe, splits, norm) -> QuantOutcome:
    """Calibrate on training images and search for an int8 model within quantize.max_drop."""
    q = recipe.quantize
    calib_x, tune_x, tune_y = _quantization_images(recipe, splits, norm)
    outcome = quantize_stage(
        tmp / ONNX_FP32,
        tmp / ONNX_INT8,
        q,
        calib_x=calib_x,
        tune_x=tune_x,
        tune_y=tune_y,
        device_kind=recipe.device.kind,
        cpu=describe_cpu(),
    )
    outcome.calibration_note = (
        f"{len(calib_x)} training images"
        if len(calib_x) == q.calibration_samples
        else f"only {len(calib_x)} training images (recipe asks for "
        f"{q.calibration_samples}): calibrated on all of them"
    )
    return outcome


def _qat(
    tmp: Path,
    recipe: Recipe,
    splits,
    norm,
    compressed: nn.Module,
    outcome: QuantOutcome,
    progress: Progress,
) -> Path:
    """Quantization-aware fine-tuning when int8 still misses its budget; returns the directory
    holding the fp32 ONNX model (and calibration) the int8 artifacts are made from.

    The QAT model is exported to ``qat/`` and searched like the first one; its int8 model
    replaces model.int8.onnx only when it loses less against the *original* fp32 model.
    """
    q, ft = recipe.quantize, recipe.compress.finetune
    calib_x, tune_x, tune_y = _quantization_images(recipe, splits, norm)
    model = copy.deepcopy(compressed)
    cfg = TrainConfig(
        epochs=q.qat_epochs, lr=q.qat_lr, batch_size=ft.batch_size, seed=ft.seed, augment=ft.augment
    )
    qat = qat_finetune(
        model, norm.apply(splits.train.images), splits.train.labels, cfg, calib_x, progress=progress
    )
    qat_dir = tmp / "qat"
    qat_dir.mkdir()
    export_onnx(model, splits.eval.image_shape, qat_dir / ONNX_FP32, opset=recipe.export.opset)
    found = quantize_stage(
        qat_dir / ONNX_FP32,
        qat_dir / ONNX_INT8,
        q,
        calib_x=calib_x,
        tune_x=tune_x,
        tune_y=tune_y,
        device_kind=recipe.device.kind,
        cpu=describe_cpu(),
    )
    best_before = min(a["drop"] for a in outcome.attempts)
    tuned = next(a for a in found.attempts if a["chosen"])["tuning_accuracy"]
    drop = outcome.fp32_tuning_accuracy - tuned
    chosen = drop < best_before
    for a in outcome.attempts:
        a["chosen"] = a["chosen"] and not chosen
    outcome.attempts.append(
        {
            "method": found.settings.method,
            "float_layers": list(found.settings.float_nodes),
            "qat_epochs": q.qat_epochs,
            "tuning_accuracy": tuned,
            "drop": drop,
            "chosen": chosen,
        }
    )
    outcome.qat = {
        **qat.to_dict(),
        "tuning_accuracy_fp32": found.fp32_tuning_accuracy,
        "seconds": round(found.seconds, 2),
    }
    if not chosen:
        return tmp
    (qat_dir / ONNX_INT8).replace(tmp / ONNX_INT8)
    outcome.settings = found.settings
    outcome.within_budget = drop <= q.max_drop
    outcome.sensitivity, outcome.first_divergence = found.sensitivity, found.first_divergence
    return qat_dir


def _sparse_copies(tmp: Path, artifacts: list[Artifact], recipe: Recipe, norm) -> list[Artifact]:
    """A sparse-stored copy of each dense ONNX / TFLite artifact, kept only where smaller.

    TFLite copies are converted again from the ONNX file the dense one came from (the int8
    QDQ model: the full-range portable copy when there is one), each weight stored as
    ``exporter.tflite.storage`` decides for ``runtime.delegate``.
    """
    from exporter.tflite import convert_onnx_file

    out = []
    for art in [a for a in artifacts if a.format == "onnx" and a.storage == "dense"]:
        name = art.path.replace(".onnx", ".sparse.onnx")
        decisions, wrote = sparsify_onnx(tmp / art.path, tmp / name)
        if wrote and (tmp / name).stat().st_size < (tmp / art.path).stat().st_size:
            out.append(
                Artifact(
                    name,
                    "onnx",
                    art.precision,
                    "sparse",
                    {**art.extra, "tensors": [d.__dict__ for d in decisions]},
                )
            )
        else:
            (tmp / name).unlink(missing_ok=True)
    for art in [a for a in artifacts if a.format == "tflite" and a.storage == "dense"]:
        name = art.path.replace(".tflite", ".sparse.tflite")
        if art.precision == "int8":
            portable = tmp / "model.int8.portable.onnx"
            src = portable if portable.exists() else tmp / ONNX_INT8
            io = art.extra.get("io_dtype", recipe.quantize.tflite_io)
            kwargs = {
                "io_dtype": io,
                "normalization": (norm.mean, norm.std) if io == "uint8" else None,
            }
        else:
            src, kwargs = tmp / ONNX_FP32, {}
        res = convert_onnx_file(
            src,
            tmp / name,
            input_layout=recipe.export.input_layout,
            storage="sparse",
            delegate=recipe.runtime.delegate,
            **kwargs,
        )
        if res.bytes < (tmp / art.path).stat().st_size:
            out.append(
                Artifact(
                    name,
                    "tflite",
                    art.precision,
                    "sparse",
                    {
                        **art.extra,
                        **_tflite_extra(res),
                        "delegate": recipe.runtime.delegate,
                        "tensors": res.tensors,
                    },
                )
            )
        else:
            (tmp / name).unlink(missing_ok=True)
    return out


def _export_tflite_int8(
    tmp: Path, recipe: Recipe, outcome: QuantOutcome, norm, source: Path
) -> Artifact:
    """int8 TFLite from the same calibration as the ONNX int8 model.

    TFLite's int8 kernels take full 8-bit weights on every CPU, so when the ONNX artifact uses
    7-bit weights for this x86 CPU, a full-range QDQ model is made from the same cached ranges
    of the fp32 model in ``source`` (``tmp``, or ``tmp/qat`` when QAT was chosen).
    """
    from exporter.tflite import convert_onnx_file

    qdq = tmp / ONNX_INT8
    if outcome.settings.reduce_range:
        qdq = tmp / "model.int8.portable.onnx"
        settings = dataclasses.replace(outcome.settings, reduce_range=False)
        quantize_onnx(
            source / ONNX_FP32,
            qdq,
            settings,
            calib_inputs=None,
            cache=calibration_cache(source, settings.method),
        )
    io = recipe.quantize.tflite_io
    res = convert_onnx_file(
        qdq,
        tmp / TFLITE_INT8,
        input_layout=recipe.export.input_layout,
        io_dtype=io,
        normalization=(norm.mean, norm.std) if io == "uint8" else None,
    )
    return Artifact(
        TFLITE_INT8,
        "tflite",
        "int8",
        "dense",
        {
            **_tflite_extra(res),
            "io_dtype": res.io_dtype,
            "float_fallback_ops": list(res.float_fallback_ops),
        },
    )


def _tflite_extra(res) -> dict:
    """What the writer reports that the report shows for every TFLite artifact."""
    return {
        "op_counts": res.op_counts,
        "transpose_count": res.transpose_count,
        "input_layout": res.input_layout,
        "conversion_s": round(res.seconds, 3),
    }


def _export_tflite(onnx_path: Path, out_dir: Path, recipe: Recipe) -> Artifact:
    from exporter.tflite import convert_onnx_file

    res = convert_onnx_file(
        onnx_path, out_dir / TFLITE_FP32, input_layout=recipe.export.input_layout
    )
    return Artifact(TFLITE_FP32, "tflite", "fp32", "dense", _tflite_extra(res))


def run(opts: RunOptions, progress: Progress | None = None) -> RunResult:
    """Run every stage and return the report; raises EdgepackError on bad input."""
    recipe = load_recipe(opts.target, opts.overrides)
    console = stderr_console(opts.quiet)
    own_progress = progress is None
    progress = progress or make_progress(opts.quiet)
    with progress:
        result = _run(opts, recipe, progress, console)
    if own_progress and not opts.quiet:
        print_table(result.report, console)
    return result


def _run(opts: RunOptions, recipe: Recipe, progress: Progress, console) -> RunResult:
    # Reaching the target is checked before any work: a missing sysroot or host fails now,
    # not after compression and export.
    runner = make_runner(recipe)
    full, splits = split_data(opts.data, opts.eval_data, recipe.eval)
    norm = resolve_normalization(full, opts.mean, opts.std, opts.weights)
    chw = full.image_shape
    loaded = build_torch_model(opts.model, opts.weights, full)
    if loaded.module is not None and not opts.weights and loaded.spec in BUILTIN:
        console.print(
            f"[yellow]warning[/]: {loaded.spec} has no --weights: validating its "
            "random initial weights (train it first with `edgepack train`)"
        )
    eval_x = norm.apply(splits.eval.images)
    eval_y = splits.eval.labels
    formats = recipe.export.formats

    with atomic_dir(opts.out, force=opts.force) as tmp:
        artifacts: list[Artifact] = []
        extra: dict = {}
        compressed = None
        if loaded.is_onnx:
            _check_onnx_fits(loaded.onnx_path, chw)
            ref_logits = onnx_logits(loaded.onnx_path, eval_x)
            num_classes = ref_logits.shape[1]
            _check_labels(splits, chw, num_classes)
            (tmp / ONNX_FP32).write_bytes(loaded.onnx_path.read_bytes())
            params = macs = None
            extra["compression"] = {"method": "skipped: the model entered as ONNX"}
        else:
            module = loaded.module
            num_classes = check_model_output(module, splits.eval, norm)
            _check_labels(splits, chw, num_classes)
            params, macs = count_params_macs(module, chw)
            ref_logits = predict(module, eval_x)
            sections, compressed = _compress_and_export(
                module, recipe, splits, norm, eval_x, tmp, progress
            )
            extra.update(sections)
        # The fp32 ONNX model is the intermediate form of every later stage, so it is always
        # written; it is an artifact (validated, reported) only when the recipe asks for ONNX.
        if "onnx" in formats:
            artifacts.append(Artifact(ONNX_FP32, "onnx", "fp32", "dense"))
        if "tflite" in formats:
            task = progress.add_task("export TFLite fp32", total=1)
            artifacts.append(_export_tflite(tmp / ONNX_FP32, tmp, recipe))
            progress.update(task, advance=1)
        if "int8" in recipe.export.precisions:
            task = progress.add_task("quantize int8", total=1)
            outcome = _quantize(tmp, recipe, splits, norm)
            int8_source = tmp
            if not outcome.within_budget and recipe.quantize.qat_epochs:
                if compressed is None:
                    outcome.qat = {
                        "skipped": "the model entered as ONNX: QAT needs the torch model"
                    }
                else:
                    int8_source = _qat(tmp, recipe, splits, norm, compressed, outcome, progress)
            extra["quantization"] = outcome.to_dict()
            if "onnx" in formats:
                artifacts.append(
                    Artifact(
                        ONNX_INT8,
                        "onnx",
                        "int8",
                        "dense",
                        {
                            "calibration": outcome.settings.method,
                            "reduce_range": outcome.settings.reduce_range,
                            "float_layers": list(outcome.settings.float_nodes),
                        },
                    )
                )
            progress.update(task, advance=1)
            if "tflite" in formats:
                task = progress.add_task("export TFLite int8", total=1)
                artifacts.append(_export_tflite_int8(tmp, recipe, outcome, norm, int8_source))
                progress.update(task, advance=1)
        if "sparse" in recipe.export.storage:
            artifacts.extend(_sparse_copies(tmp, artifacts, recipe, norm))

        np.savez(
            tmp / EVAL_BATCH,
            inputs=eval_x,
            labels=eval_y,
            reference_logits=ref_logits.astype(np.float32),
            images=splits.eval.images,
        )
        save_manifest(artifacts, tmp)
        check = validate(tmp, artifacts, recipe, progress, runner)
        reference = {
            "accuracy": accuracy(ref_logits, eval_y),
            "params": params,
            "macs": macs,
            "samples": int(len(eval_y)),
        }
        report = build_report(
            target={
                "name": recipe.name,
                "source": recipe.source,
                "device": recipe.device.kind,
                "description": recipe.description,
            },
            model={
                "spec": opts.model,
                "weights": opts.weights,
                "input_shape": list(chw),
                "classes": list(full.classes),
            },
            data={
                "train": splits.train.source,
                "train_images": len(splits.train),
                "eval": splits.eval.source,
                "eval_images": len(splits.eval),
                "eval_note": splits.eval_note,
                "normalization": {
                    "mean": list(norm.mean),
                    "std": list(norm.std),
                    "source": norm.source,
                },
            },
            recipe=recipe.to_dict(),
            reference=reference,
            artifacts=artifacts,
            check=check,
            extra={**extra, "edgepack_version": __version__},
        )
        write_report(report, tmp / REPORT)
        write_html(report, tmp / "report.html")
    return RunResult(report, opts.out, artifacts)


def load_report(out_dir: Path) -> dict:
    return json.loads((out_dir / REPORT).read_text())
