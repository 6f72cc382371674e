"""The one-shot pipeline, stage by stage:

    load model and data -> compress (channels, pruning, fine-tuning, rounding; torch models)
    -> ONNX fp32 -> TFLite fp32 -> int8: calibrated ONNX QDQ (accuracy search, QAT when asked)
    and TFLite int8 from the QDQ model the quantize stage hands over
    -> sparse-stored copies where smaller -> validate on the target (runtime_check) -> report

Each stage is a function from files to files; this module only sequences them and builds
the output directory atomically (nothing appears under --out unless the run completes).
File names come from exporter.outdir.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.markup import escape
from torch import nn

from exporter import __version__
from exporter.artifacts import Artifact, Int8Facts, StoredTensor, TfliteFacts, save_index
from exporter.common.atomic import Marker, atomic_dir, check_replaceable
from exporter.common.out_path import check_out_path
from exporter.common.output_lock import output_lock
from exporter.common.progress import Progress, make_progress, stderr_console
from exporter.common.typed_json import from_json, to_json
from exporter.compress import compress
from exporter.inputs.data import check_fits
from exporter.inputs.paths import input_paths
from exporter.inputs.prepare import (
    build_torch_model,
    reference_logits,
    resolve_normalization,
    split_data,
)
from exporter.models.complexity import count_params_macs
from exporter.models.loading import copy_model
from exporter.models.zoo import BUILTIN
from exporter.onnx.entry import Entry, prepare_entry, write_entry
from exporter.onnx.export import export_onnx, export_onnx_info, onnx_logits
from exporter.onnx.precision import float16_onnx
from exporter.onnx.sparse import sparsify_onnx
from exporter.outdir import (
    EVAL_BATCH,
    ONNX_FP32,
    ONNX_INT8,
    ONNX_INT16X8,
    OUTPUT_MARKER,
    QAT_DIR,
    REPORT,
    REPORT_HTML,
    TFLITE_FP32,
    TFLITE_INT8,
    artifact_name,
    sparse_name,
)
from exporter.quantize import QuantOutcome, quantize_stage
from exporter.quantize.dynamic import dynamic_onnx
from exporter.quantize.qat import qat_finetune
from exporter.recipe import QuantizeSpec, Recipe, load_recipe
from exporter.report.build import build_report, print_table, reference_for
from exporter.report.html import write_html
from exporter.report.schema import (
    Compression,
    DataInfo,
    ExportCheck,
    ModelInfo,
    Normalization,
    Qat,
    Quantization,
    Report,
    Target,
    read_report,
    write_report,
)
from exporter.targets.validate import make_runner, validate
from exporter.training.loop import TrainConfig, accuracy, predict
from runtime_check.cpu import describe_cpu

__all__ = ["REPORT", "RunOptions", "RunResult", "load_report", "run"]


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
    output: str | None = None  # --output: the model output to keep when it has several
    layout: str | None = None  # --layout: an .onnx model's input layout, when ambiguous


@dataclass
class RunResult:
    report: dict  # report.json as written (exporter.report.schema.Report.to_dict())
    out: Path
    artifacts: list[Artifact] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.report["passed"])


def _check_labels(splits, chw: tuple[int, int, int], num_classes: int) -> None:
    check_fits(splits.eval, chw, num_classes)
    check_fits(splits.train, chw, num_classes)


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    """Whether two copies of one model hold the same tensors, bit for bit (compression that
    changed nothing: pruning at sparsity 0, no fine-tuning, no channels removed)."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].shape == sb[k].shape and sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k])
        for k in sa
    )


def _compress_and_export(
    module,
    recipe: Recipe,
    splits,
    norm,
    eval_x: np.ndarray,
    ref: tuple[np.ndarray, int, int],
    tmp: Path,
    progress: Progress,
) -> tuple[Compression, ExportCheck, nn.Module]:
    """Compress a copy of the model, export it to ONNX fp32 and check the export's parity;
    returns the report's sections and the compressed module. The original model's logits,
    params and MACs (``ref``) stand for the compressed model's when compression changed no
    weight, so no eval image goes through torch twice."""
    compressed = copy_model(module)
    train_x = norm.apply(splits.train.images) if recipe.compress.finetune.epochs else None
    comp = compress(
        compressed,
        recipe.compress,
        train_x,
        splits.train.labels,
        input_shape=splits.eval.image_shape,
        progress=progress,
    )
    unchanged = _same_weights(module, compressed)
    comp_logits = ref[0] if unchanged else predict(compressed, eval_x)
    task = progress.add_task("export ONNX", total=1)
    how = export_onnx_info(
        compressed, splits.eval.image_shape, tmp / ONNX_FP32, opset=recipe.export.opset
    )
    exported = onnx_logits(tmp / ONNX_FP32, eval_x[:64])
    progress.update(task, advance=1)
    params, macs = ref[1:] if unchanged else count_params_macs(compressed, splits.eval.image_shape)
    section = {
        **comp.to_dict(),
        "params": params,
        "macs": macs,
        "torch_accuracy": accuracy(comp_logits, splits.eval.labels),
    }
    parity = float(np.abs(exported - comp_logits[:64]).max())
    check = ExportCheck(
        parity,
        how.exporter,
        how.dynamic_batch,
        how.fallback_reason,
        round(how.seconds, 2),
        how.cached,
    )
    return from_json(Compression, section, "compression"), check, compressed


# The fewest tuning images a MAC budget (quantize.tuning_gmacs) leaves: 0.4 points an image.
MIN_TUNING_IMAGES = 250


def tuning_count(q: QuantizeSpec, macs: int | None) -> int:
    """quantize.tuning_samples, capped for a large net so that one pass over the tuning images
    costs at most quantize.tuning_gmacs (the search makes two or more such passes)."""
    if not macs:
        return q.tuning_samples
    affordable = int(q.tuning_gmacs * 1e9 // macs)
    return min(q.tuning_samples, max(MIN_TUNING_IMAGES, affordable))


def _quantization_images(
    recipe: Recipe, splits, norm, macs: int | None = None
) -> tuple[np.ndarray, ...]:
    """Calibration and tuning images, both from the training split (never the eval set)."""
    q = recipe.quantize
    rng = np.random.default_rng(recipe.eval.seed)
    order = rng.permutation(len(splits.train))
    calib_idx = np.sort(order[: q.calibration_samples])
    tuning = tuning_count(q, macs)
    tune_idx = np.sort(order[q.calibration_samples : q.calibration_samples + tuning])
    if len(tune_idx) == 0:  # tiny data: tune on the calibration images rather than not at all
        tune_idx = calib_idx
    return (
        norm.apply(splits.train.images[calib_idx]),
        norm.apply(splits.train.images[tune_idx]),
        splits.train.labels[tune_idx],
    )


def _search(
    fp32: Path, out: Path, recipe: Recipe, images: tuple, activations: str = "int8"
) -> QuantOutcome:
    """The quantize stage's search on ``fp32`` with the (calibration, tuning, labels) images."""
    calib_x, tune_x, tune_y = images
    return quantize_stage(
        fp32,
        out,
        recipe.quantize,
        calib_x=calib_x,
        tune_x=tune_x,
        tune_y=tune_y,
        device_kind=recipe.device.kind,
        cpu=describe_cpu(),
        activations=activations,
    )


def _quantize(
    tmp: Path, recipe: Recipe, splits, norm, activations: str = "int8", macs: int | None = None
) -> QuantOutcome:
    """Calibrate on training images and search for an int8 model (16x8 with
    ``activations="int16"``) within quantize.max_drop."""
    q = recipe.quantize
    images = _quantization_images(recipe, splits, norm, macs)
    calib_x, tune_y = images[0], images[2]
    out = tmp / (ONNX_INT16X8 if activations == "int16" else ONNX_INT8)
    outcome = _search(tmp / ONNX_FP32, out, recipe, images, activations)
    outcome.calibration_note = (
        f"{len(calib_x)} training images"
        if len(calib_x) == q.calibration_samples
        else f"only {len(calib_x)} training images (recipe asks for "
        f"{q.calibration_samples}): calibrated on all of them"
    )
    if tuning_count(q, macs) < q.tuning_samples:
        outcome.calibration_note += (
            f"; tuned on {len(tune_y)} training images, not quantize.tuning_samples = "
            f"{q.tuning_samples}: {macs / 1e9:.2f} GMACs an image, quantize.tuning_gmacs = "
            f"{q.tuning_gmacs:g}"
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
    macs: int | None = None,
) -> None:
    """Quantization-aware fine-tuning when int8 still misses its budget.

    The QAT model is exported to ``qat/`` and searched like the first one; its int8 model
    (and its full 8-bit twin, if any) replaces model.int8.onnx only when it loses less
    against the *original* fp32 model; ``outcome`` then describes it.
    """
    q, ft = recipe.quantize, recipe.compress.finetune
    images = _quantization_images(recipe, splits, norm, macs)
    calib_x = images[0]
    model = copy_model(compressed)
    cfg = TrainConfig.finetuning(ft, q.qat_epochs, q.qat_lr)
    qat = qat_finetune(
        model, norm.apply(splits.train.images), splits.train.labels, cfg, calib_x, progress=progress
    )
    qat_dir = tmp / QAT_DIR
    qat_dir.mkdir()
    export_onnx(model, splits.eval.image_shape, qat_dir / ONNX_FP32, opset=recipe.export.opset)
    found = _search(qat_dir / ONNX_FP32, qat_dir / ONNX_INT8, recipe, images)
    best_before = min(a["drop"] for a in outcome.attempts)
    tuned = next(a for a in found.attempts if a["chosen"])["tuning_accuracy"]
    drop = outcome.fp32_tuning_accuracy - tuned
    # Strictly better by at least one tuning image: a float-noise "improvement" is none.
    chosen = not outcome.within(best_before, drop)
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
    outcome.qat = to_json(
        Qat(
            **qat.to_dict(),
            tuning_accuracy_fp32=found.fp32_tuning_accuracy,
            seconds=round(found.seconds, 2),
        )
    )
    if not chosen:
        return
    found.onnx_path.replace(outcome.onnx_path)
    if found.tflite_source != found.onnx_path:  # the full-range twin of a 7-bit model
        outcome.tflite_source = tmp / found.tflite_source.name
        found.tflite_source.replace(outcome.tflite_source)
    outcome.settings = found.settings
    outcome.within_budget = outcome.within(drop, q.max_drop)
    outcome.sensitivity, outcome.first_divergence = found.sensitivity, found.first_divergence


@dataclass(frozen=True)
class _TfliteJob:
    """One ONNX -> TFLite conversion: the ONNX file and the writer's options."""

    source: Path
    name: str
    precision: str
    options: dict = field(default_factory=dict)  # convert_onnx_file keywords
    int8: Int8Facts | None = None


def _convert(tmp: Path, job: _TfliteJob, recipe: Recipe) -> tuple[Artifact, Artifact | None]:
    """The dense TFLite artifact and, when the recipe asks for sparse storage and it is smaller,
    its sparse-stored copy: one lowering, serialised twice (``storage`` decides each weight's
    storage for ``runtime.delegate``)."""
    from exporter.tflite import convert_onnx_file

    # Sparse storage is decided per fp32 / int8 weight encoding; the other precisions are dense.
    sparse = "sparse" in recipe.export.storage and job.precision in ("fp32", "int8")
    sparse_path = tmp / sparse_name(job.name) if sparse else None
    res = convert_onnx_file(
        job.source,
        tmp / job.name,
        input_layout=recipe.export.input_layout,
        delegate=recipe.runtime.delegate,
        sparse_path=sparse_path,
        **job.options,
    )
    dense = _tflite_artifact(job, res, None)
    if res.sparse is None:
        return dense, None
    if res.sparse.bytes >= res.bytes:
        res.sparse.path.unlink(missing_ok=True)
        return dense, None
    return dense, _tflite_artifact(job, res.sparse, recipe.runtime.delegate)


def _tflite_artifact(job: _TfliteJob, res, storage_delegate: str | None) -> Artifact:
    facts = TfliteFacts(
        op_counts=dict(res.op_counts),
        transpose_count=res.transpose_count,
        input_layout=res.input_layout,
        io_dtype=res.io_dtype,
        float_fallback_ops=list(res.float_fallback_ops),
        conversion_s=round(res.seconds, 3),
        storage_delegate=storage_delegate,
    )
    name = res.path.name
    tensors = (
        [from_json(StoredTensor, t, f"{name} tensors") for t in res.tensors]
        if res.tensors is not None
        else None
    )
    return Artifact(name, "tflite", job.precision, res.storage, facts, job.int8, tensors)


def _sparse_onnx_copies(tmp: Path, artifacts: list[Artifact]) -> list[Artifact]:
    """A sparse-stored copy of each dense ONNX artifact, kept only where smaller."""
    out = []
    for art in [a for a in artifacts if a.format == "onnx" and a.storage == "dense"]:
        name = sparse_name(art.path)
        decisions, wrote = sparsify_onnx(tmp / art.path, tmp / name)
        if wrote and (tmp / name).stat().st_size < (tmp / art.path).stat().st_size:
            tensors = [StoredTensor(**d.__dict__) for d in decisions]
            out.append(
                Artifact(name, "onnx", art.precision, "sparse", int8=art.int8, tensors=tensors)
            )
        else:
            (tmp / name).unlink(missing_ok=True)
    return out


def _weight_only(tmp: Path, recipe: Recipe, progress: Progress) -> list[Artifact]:
    """fp16 and dynamic-range int8, where the recipe asks: weight-only precisions made from
    model.fp32.onnx, with no calibration data."""
    artifacts: list[Artifact] = []
    for precision, onnx_writer in (("fp16", float16_onnx), ("dynamic", dynamic_onnx)):
        if precision not in recipe.export.precisions:
            continue
        task = progress.add_task(f"export {precision}", total=1)
        if "onnx" in recipe.export.formats:
            name = artifact_name(precision, "onnx")
            onnx_writer(tmp / ONNX_FP32, tmp / name)
            artifacts.append(Artifact(name, "onnx", precision, "dense"))
        if "tflite" in recipe.export.formats:
            job = _TfliteJob(
                tmp / ONNX_FP32,
                artifact_name(precision, "tflite"),
                precision,
                {"precision": precision},
            )
            artifacts.append(_convert(tmp, job, recipe)[0])
        progress.update(task, advance=1)
    return artifacts


def _int16x8(
    tmp: Path, recipe: Recipe, splits, norm, progress: Progress, macs: int | None = None
) -> tuple[list[Artifact], QuantOutcome | None]:
    """16x8 where the recipe asks: the int8 search with int16 activations (same calibration
    ranges, sensitivity table and float fallbacks), then its TFLite lowering."""
    if "int16x8" not in recipe.export.precisions:
        return [], None
    task = progress.add_task("quantize int16x8", total=1)
    outcome = _quantize(tmp, recipe, splits, norm, activations="int16", macs=macs)
    facts = Int8Facts(
        calibration=outcome.settings.method,
        reduce_range=False,
        float_layers=list(outcome.settings.float_nodes),
    )
    artifacts = []
    if "onnx" in recipe.export.formats:
        artifacts.append(Artifact(ONNX_INT16X8, "onnx", "int16x8", "dense", int8=facts))
    if "tflite" in recipe.export.formats:
        job = _TfliteJob(
            outcome.onnx_path,
            artifact_name("int16x8", "tflite"),
            "int16x8",
            int8=dataclasses.replace(facts, qdq_source=outcome.onnx_path.name),
        )
        artifacts.append(_convert(tmp, job, recipe)[0])
    progress.update(task, advance=1)
    return artifacts, outcome


def _int8_job(tmp: Path, recipe: Recipe, outcome: QuantOutcome, norm) -> _TfliteJob:
    """int8 TFLite from the QDQ model the quantize stage chose for it (the full 8-bit twin
    when the ONNX int8 model has 7-bit weights): one calibration for both int8 formats."""
    io = recipe.quantize.tflite_io
    return _TfliteJob(
        outcome.tflite_source,
        TFLITE_INT8,
        "int8",
        {"io_dtype": io, "normalization": (norm.mean, norm.std) if io == "uint8" else None},
        Int8Facts(
            calibration=outcome.settings.method,
            reduce_range=False,
            float_layers=list(outcome.settings.float_nodes),
            qdq_source=outcome.tflite_source.name,
        ),
    )


def run(opts: RunOptions, progress: Progress | None = None) -> RunResult:
    """Run every stage and return the report; raises EdgepackError on bad input."""
    recipe = load_recipe(opts.target, opts.overrides)
    # The output is checked before any work: it must not overlap an input, and it is ours (no
    # other edgepack process writes it) until the run ends.
    inputs = input_paths(opts.model, opts.data, opts.eval_data, opts.weights)
    check_out_path(opts.out, [*inputs, ("--target", Path(recipe.source))])
    console = stderr_console(opts.quiet)
    own_progress = progress is None
    progress = progress or make_progress(opts.quiet)
    with output_lock(opts.out), progress:
        check_replaceable(Path(opts.out), opts.force, OUTPUT_MARKER)
        result = _run(opts, recipe, progress, console)
    if own_progress and not opts.quiet:
        print_table(result.report, console)
    return result


def _check_model_fits(
    loaded, entry: Entry, splits, norm, chw: tuple[int, int, int], eval_x: np.ndarray
) -> np.ndarray:
    """Refuse a model that does not take the ``chw`` images of ``--data`` or whose outputs do
    not fit the labels of both splits; returns the reference logits, whose first image was
    the check: each eval image goes through the original model once per run."""
    if loaded.is_onnx:
        ref_logits = entry.logits(eval_x)
    else:
        ref_logits = reference_logits(loaded.module, splits.eval, eval_x)
    _check_labels(splits, chw, ref_logits.shape[1])
    return ref_logits


def _warn_about_inputs(opts: RunOptions, loaded, norm, console) -> bool:
    """Warnings on inputs that run but may not mean what the user thinks; returns whether the
    model has random weights (the verdict then says it is not meaningful)."""
    random_weights = loaded.module is not None and not opts.weights and loaded.spec in BUILTIN
    if random_weights:
        console.print(
            f"[yellow]warning[/]: {loaded.spec} has no --weights: validating its "
            "random initial weights (train it first with `edgepack train`)"
        )
    elif norm.source.startswith("statistics of "):
        console.print(
            f"[yellow]warning[/]: the input normalization is guessed from the "
            f"{escape(norm.source)}; pass the model's own --mean/--std, or every figure and "
            "the package are computed on wrongly scaled inputs"
        )
    return random_weights


def _run(opts: RunOptions, recipe: Recipe, progress: Progress, console) -> RunResult:
    # Reaching the target is checked before any work: a missing sysroot or host fails now,
    # not after compression and export.
    runner = make_runner(recipe)
    full, splits = split_data(opts.data, opts.eval_data, recipe.eval)
    norm = resolve_normalization(full, opts.mean, opts.std, opts.weights)
    chw = full.image_shape
    loaded = build_torch_model(opts.model, opts.weights, full)
    loaded, entry = prepare_entry(loaded, chw, output=opts.output, layout=opts.layout)
    eval_x = norm.apply(splits.eval.images)
    eval_y = splits.eval.labels
    formats = recipe.export.formats
    # The model must fit the data before anything is written or warned about: a bad input is
    # one line, not a warning followed by an error.
    ref_logits = _check_model_fits(loaded, entry, splits, norm, chw, eval_x)
    random_weights = _warn_about_inputs(opts, loaded, norm, console)

    marker = Marker(OUTPUT_MARKER, {"edgepack": __version__, "command": "run"})
    with atomic_dir(opts.out, force=opts.force, marker=marker) as tmp:
        artifacts: list[Artifact] = []
        sparse_tflite: list[Artifact] = []  # listed after the dense artifacts, as before
        compressed = None
        export = quantization = None
        if loaded.is_onnx:
            write_entry(entry, tmp / ONNX_FP32)
            params = macs = None
            compression = Compression(method="skipped: the model entered as ONNX")
        else:
            module = loaded.module
            params, macs = count_params_macs(module, chw)
            compression, export, compressed = _compress_and_export(
                module, recipe, splits, norm, eval_x, (ref_logits, params, macs), tmp, progress
            )
        # What the int8 search runs is the compressed model: its MACs bound the tuning images.
        quant_macs = compression.macs or macs
        # The fp32 ONNX model is the intermediate form of every later stage, so it is always
        # written; it is an artifact (validated, reported) only when the recipe asks for ONNX.
        if "onnx" in formats:
            artifacts.append(Artifact(ONNX_FP32, "onnx", "fp32", "dense"))
        if "tflite" in formats:
            task = progress.add_task("export TFLite fp32", total=1)
            dense, sparse = _convert(tmp, _TfliteJob(tmp / ONNX_FP32, TFLITE_FP32, "fp32"), recipe)
            artifacts.append(dense)
            sparse_tflite += [sparse] if sparse else []
            progress.update(task, advance=1)
        artifacts.extend(_weight_only(tmp, recipe, progress))
        if "int8" in recipe.export.precisions:
            task = progress.add_task("quantize int8", total=1)
            outcome = _quantize(tmp, recipe, splits, norm, macs=quant_macs)
            if not outcome.within_budget and recipe.quantize.qat_epochs:
                if compressed is None:
                    outcome.qat = to_json(
                        Qat(skipped="the model entered as ONNX: QAT needs the torch model")
                    )
                else:
                    _qat(tmp, recipe, splits, norm, compressed, outcome, progress, quant_macs)
            quantization = from_json(Quantization, outcome.section(), "quantization")
            if "onnx" in formats:
                facts = Int8Facts(
                    calibration=outcome.settings.method,
                    reduce_range=outcome.settings.reduce_range,
                    float_layers=list(outcome.settings.float_nodes),
                )
                artifacts.append(Artifact(ONNX_INT8, "onnx", "int8", "dense", int8=facts))
            progress.update(task, advance=1)
            if "tflite" in formats:
                task = progress.add_task("export TFLite int8", total=1)
                dense, sparse = _convert(tmp, _int8_job(tmp, recipe, outcome, norm), recipe)
                artifacts.append(dense)
                sparse_tflite += [sparse] if sparse else []
                progress.update(task, advance=1)
        wide, wide_outcome = _int16x8(tmp, recipe, splits, norm, progress, quant_macs)
        artifacts.extend(wide)
        if quantization is None and wide_outcome is not None:
            quantization = from_json(Quantization, wide_outcome.section(), "quantization")
        if "sparse" in recipe.export.storage:
            artifacts.extend(_sparse_onnx_copies(tmp, artifacts))
        artifacts.extend(sparse_tflite)

        # uint8 pixels and the normalization, not float32 copies: runtime_check normalizes on
        # the device with the function that made eval_x (runtime_check.batch), bit for bit.
        np.savez(
            tmp / EVAL_BATCH,
            images=splits.eval.images,
            mean=np.asarray(norm.mean, np.float64),
            std=np.asarray(norm.std, np.float64),
            labels=eval_y,
            reference_logits=ref_logits.astype(np.float32),
        )
        save_index(artifacts, tmp)
        check = validate(tmp, artifacts, recipe, progress, runner)
        report = build_report(
            target=Target(
                name=recipe.name,
                source=recipe.source,
                device=recipe.device.kind,
                description=recipe.description,
            ),
            model=ModelInfo(
                spec=opts.model,
                weights=opts.weights,
                input_shape=list(chw),
                classes=list(full.classes),
                random_weights=random_weights,
                **entry.facts(),
            ),
            data=DataInfo(
                train=splits.train.source,
                train_images=len(splits.train),
                eval=splits.eval.source,
                eval_images=len(splits.eval),
                eval_note=splits.eval_note,
                normalization=Normalization(list(norm.mean), list(norm.std), norm.source),
            ),
            recipe=recipe.to_dict(),
            reference=reference_for(accuracy(ref_logits, eval_y), eval_y, params=params, macs=macs),
            artifacts=artifacts,
            check=check,
            edgepack_version=__version__,
            compression=compression,
            export=export,
            quantization=quantization,
        )
        write_report(report, tmp / REPORT)
        as_json = report.to_dict()
        write_html(as_json, tmp / REPORT_HTML)
    return RunResult(as_json, opts.out, artifacts)


def load_report(out_dir: Path) -> Report:
    """The typed report of an output directory (one-line InputFileError when unreadable)."""
    return read_report(out_dir / REPORT)
