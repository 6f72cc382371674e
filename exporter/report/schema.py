"""report.json as dataclasses: the one definition the writer, the readers and the docs share.

`edgepack run` writes a :class:`Report` to ``report.json``; `edgepack check` writes one to
``checks/<target>.json``. docs/report_schema.md and docs/report.schema.json are generated from
these classes (``make docs``). A row keeps what the exporter knows about an artifact
(``tflite``, ``int8``, ``tensors``: exporter.artifacts) apart from what runtime_check measured,
so one can never overwrite the other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from exporter.artifacts import Artifact, Int8Facts, StoredTensor, TfliteFacts
from exporter.common.typed_json import TypedJsonError, doc, from_json, to_json
from exporter.errors import InputFileError

# 3: `verdict` (passed / failed / not_meaningful) beside `passed`, which is now false for a run
# whose verdict cannot mean anything or where an artifact was not validated; `notes`; the
# eval set's resolution in `reference`; each artifact's sha256.
SCHEMA_VERSION = 3
# Keys every report of every version has: without them a JSON file is not a report at all.
_IDENTIFYING = ("schema_version", "passed", "target", "model", "reference", "artifacts")


@dataclass
class Target:
    """Where the artifacts were validated."""

    name: str = doc("target name (recipe file stem)")
    source: str = doc("the recipe file")
    device: str = doc("`local`, `qemu`, `ssh` or `tflm`")
    description: str = doc("the recipe's description")
    host: str | None = doc("SSH host of a check (`--host`), else null", default=None)


@dataclass
class ModelInfo:
    spec: str = doc("as given to `--model`")
    weights: str | None = doc("`--weights`, null when none was given")
    input_shape: list[int] = doc("[C, H, W]")
    classes: list[str] = doc("class names in output order")
    random_weights: bool = doc(
        "a built-in architecture validated with its random initial weights (no `--weights`): "
        "the verdict is `not_meaningful`",
        default=False,
    )
    input_name: str | None = doc(
        "the model's input name, kept in every artifact (`input` for torch models)", default=None
    )
    input_layout: str | None = doc(
        "an `.onnx` model's own input layout, `nchw` or `nhwc` (detected from the data's shape, "
        "or `--layout`); the artifacts of an NHWC model take NCHW through a Transpose put in "
        "front; null for torch models (NCHW)",
        default=None,
    )
    output: str | None = doc(
        "the output validated and exported when the model has several (`--output`, else the "
        "first); null for a single output",
        default=None,
    )
    outputs: list[str] | None = doc(
        "every output of a model that has several, else null", default=None
    )
    adapted: list[str] | None = doc(
        "what was changed in the model to enter the pipeline (an `.onnx` model's pinned dims, "
        "Transpose, outputs dropped; a `.pt2` program's training-mode nodes set to eval), null "
        "when used as it is",
        default=None,
    )


@dataclass
class Normalization:
    mean: list[float] = doc("per channel, for pixels / 255")
    std: list[float] = doc("per channel, for pixels / 255")
    source: str = doc("where they came from: `--mean/--std`, the weights' sidecar, or the data")


@dataclass
class DataInfo:
    train: str = doc("the training split")
    train_images: int = doc("images in the training split")
    eval: str = doc("the eval split")
    eval_images: int = doc("images in the eval split")
    eval_note: str = doc("where the eval images came from: `--eval-data` or a seeded hold-out")
    normalization: Normalization = doc("the input normalization")


@dataclass
class CpuInfo:
    """The machine runtime_check ran on."""

    machine: str = doc("`x86_64`, `aarch64`, ...")
    model: str = doc("CPU model name")
    cpu_part: str | None = doc("ARM `CPU part` (0xd08: Cortex-A72, ...), null elsewhere")
    cores: int | None = doc("logical cores")
    features: list[str] = doc("ISA flags that steer kernels: avx2, avx512_vnni, asimddp, ...")
    emulated: str | None = doc(
        "under QEMU: the emulator and CPU model (`qemu-aarch64 8.2 -cpu cortex-a72`)", default=None
    )


@dataclass
class Reference:
    """The original (uncompressed) model on the eval images."""

    accuracy: float = doc("top-1, percent")
    params: int | None = doc("parameters; null when the model entered as ONNX")
    macs: int | None = doc("multiply-accumulates per image; null when the model entered as ONNX")
    samples: int = doc("eval images")
    points_per_image: float = doc(
        "100 / samples: what one eval image is worth in accuracy points (the resolution of "
        "every accuracy figure and of `max_accuracy_drop`)"
    )
    eval_classes: int = doc("distinct labels among the eval images")
    chance_accuracy: float = doc(
        "percent a model that always answers the most frequent eval label scores; a reference "
        "not clearly above it makes the verdict `not_meaningful`"
    )
    note: str | None = doc(
        "checks: when the target's `eval.samples` is smaller than the batch, the accuracy is "
        "recomputed on that subset and this says so",
        default=None,
    )


@dataclass
class Latency:
    """Batch-1 wall time after `runtime.warmup` untimed runs."""

    p50: float = doc("median, ms")
    p90: float = doc("90th percentile, ms")
    mean: float = doc("mean, ms")
    runs: int = doc("timed runs")
    emulated: bool = doc(
        "measured under QEMU: not the device's latency, never judged", default=False
    )


@dataclass
class InputInfo:
    """The model input as the runtime saw it."""

    layout: str = doc("`nchw` or `nhwc`")
    dtype: str = doc("`float32`, `int8`, `uint8`")
    shape: list[Any] = doc("input shape (a dimension may be a name)")
    scale: float | None = doc("quantization scale, null for float")
    zero_point: int | None = doc("quantization zero point, null for float")
    raw_pixels: bool = doc("fed uint8 camera pixels as they are (normalization in the model)")


@dataclass
class BudgetCheck:
    limit: float = doc("the recipe's limit")
    value: float = doc("the artifact's figure")
    ok: bool = doc("the figure holds the limit (accuracy drops within one eval image of it)")
    images: int | None = doc(
        "`max_accuracy_drop` only: the drop counted in eval images (what is judged)", default=None
    )


@dataclass
class ArtifactRow:
    """One artifact: what the exporter wrote, then what runtime_check measured and the verdict.

    Measured fields are null when the artifact was not validated (`status` skipped or error).
    """

    path: str = doc("file name inside the output directory")
    format: Literal["onnx", "tflite"] = doc("artifact format")
    precision: str = doc("`fp32`, `fp16`, `dynamic`, `int8` or `int16x8`")
    storage: str = doc("`dense` or `sparse`")
    status: Literal["ok", "skipped", "error"] = doc(
        "`ok`; `skipped` (its runtime is missing or not in the recipe) or `error`: see `reason`"
    )
    reason: str | None = doc("why it was skipped or errored, else null", default=None)
    bytes: int | None = doc("file size", default=None)
    gzip_bytes: int | None = doc("gzip -9 size (what an app download sees)", default=None)
    accuracy: float | None = doc("top-1 on the eval images, percent", default=None)
    accuracy_drop: float | None = doc(
        "`reference.accuracy - accuracy`, points (negative: better than the original)",
        default=None,
    )
    agreement: float | None = doc(
        "fraction of eval images whose top-1 equals the original model's", default=None
    )
    max_abs_diff: float | None = doc("max |logit - original logit| over the eval set", default=None)
    latency_ms: Latency | None = doc("batch-1 latency", default=None)
    instructions_per_inference: float | None = doc(
        "under QEMU with the counting plugin: guest instructions per inference (repeatable "
        "exactly), else null",
        default=None,
    )
    emulated: bool = doc("measured under QEMU", default=False)
    threads: int | None = doc("intra-op threads", default=None)
    runtime: str | None = doc("`onnxruntime`, `ai-edge-litert` or `tflite-runtime`", default=None)
    runtime_version: str | None = doc("its version", default=None)
    delegate: str | None = doc(
        "what the runtime ran it with, as measured: `cpu` (onnxruntime), `xnnpack` or `none` "
        "(LiteRT's built-in kernels)",
        default=None,
    )
    ops_outside_delegate: list[str] | None = doc(
        "TFLite under XNNPACK, as measured at load: the ops LiteRT ran on its own kernels "
        "because the delegate did not take them (`[]`: fully on XNNPACK); null when no "
        "delegate was asked for or the runtime does not expose its nodes",
        default=None,
    )
    peak_rss_mb: float | None = doc(
        "peak resident memory of the process that ran this artifact alone (interpreter and "
        "eval batch included)",
        default=None,
    )
    model_rss_mb: float | None = doc(
        "resident memory that loading the session and one inference add (Linux; under QEMU, "
        "the emulator's)",
        default=None,
    )
    arena_bytes: int | None = doc(
        "TFLM targets: the smallest tensor arena the model allocated and ran in (bisection "
        "under TFLM's recording allocator, whose bookkeeping it includes); null elsewhere",
        default=None,
    )
    arena_breakdown: list[str] | None = doc(
        "TFLM targets: the recording allocator's report of that arena (head, tail, per kind)",
        default=None,
    )
    flash_bytes: int | None = doc(
        "TFLM targets: the model's bytes in flash (the .tflite file); the code of TFLM, its "
        "kernels and the application is not included",
        default=None,
    )
    input: InputInfo | None = doc("the model input as the runtime saw it", default=None)
    samples: int | None = doc("eval images run", default=None)
    budgets: dict[str, BudgetCheck] = doc(
        "per budget of the recipe that applies (`max_accuracy_drop`, `min_agreement`, "
        "`max_latency_p90_ms`, `max_bytes`, `max_arena_bytes`, `max_flash_bytes`); empty "
        "unless `status` is ok",
        default_factory=dict,
    )
    tflite: TfliteFacts | None = doc("TFLite artifacts: what the writer emitted", default=None)
    int8: Int8Facts | None = doc("int8 artifacts: how they were quantized", default=None)
    tensors: list[StoredTensor] | None = doc(
        "sparse storage: how each weight is stored", default=None
    )
    sha256: str | None = doc(
        "SHA-256 of the file as written and validated (artifacts.json holds the same)",
        default=None,
    )

    @property
    def artifact(self) -> Artifact:
        """The exporter's facts of this row, as artifacts.json holds them."""
        return Artifact(
            self.path,
            self.format,
            self.precision,
            self.storage,
            tflite=self.tflite,
            int8=self.int8,
            tensors=self.tensors,
            sha256=self.sha256,
            bytes=self.bytes,
        )


@dataclass
class Parity:
    a: str = doc("an artifact")
    b: str = doc("another artifact")
    agreement: float = doc("fraction of eval images with the same top-1 in both")


@dataclass
class LayerSparsity:
    name: str = doc("module name")
    kind: str = doc("`Conv` or `Linear`")
    params: int = doc("weights")
    zeros: int = doc("zero weights")
    sparsity: float = doc("zeros / params")


@dataclass
class ChannelCount:
    name: str = doc("module name")
    before: int = doc("output channels before")
    after: int = doc("output channels after")


@dataclass
class ChannelPruning:
    """Structured pruning: whole channels removed."""

    ratio: float = doc("`compress.channels.ratio`")
    scope: str = doc("`global` or `layer`")
    importance: str = doc("`l1`, `l2` or `bn`")
    params_before: int = doc("parameters before")
    params_after: int = doc("parameters after")
    macs_before: int = doc("MACs per image before")
    macs_after: int = doc("MACs per image after")
    channels: list[ChannelCount] = doc("per conv/linear layer")


@dataclass
class Compression:
    """What compression did (run reports only)."""

    method: str = doc("the steps in words; `skipped: ...` when the model entered as ONNX")
    target_sparsity: float | None = doc("`compress.prune.sparsity`", default=None)
    threshold: float | None = doc("`compress.prune.threshold`", default=None)
    scope: str | None = doc("`global` or `layer`", default=None)
    finetune_epochs: int | None = doc("fine-tuning epochs", default=None)
    finetune_loss: list[float] = doc("training loss per epoch", default_factory=list)
    rounding: dict[str, float] = doc("rounding step per tensor", default_factory=dict)
    layers: list[LayerSparsity] = doc("per prunable layer", default_factory=list)
    pruned_fraction: float | None = doc(
        "zeros / prunable weights (excluded layers not counted)", default=None
    )
    channels: ChannelPruning | None = doc("structured pruning, when it ran", default=None)
    params: int | None = doc("parameters of the compressed model", default=None)
    macs: int | None = doc("MACs per image of the compressed model", default=None)
    torch_accuracy: float | None = doc("the compressed model in torch, percent", default=None)


@dataclass
class ExportCheck:
    onnx_vs_torch_max_abs_diff: float = doc(
        "compressed torch model vs its ONNX export, max |logit diff| on the first 64 eval images"
    )
    exporter: str = doc(
        "the torch.onnx path that wrote model.fp32.onnx: `dynamo` or `torchscript` "
        "(`dynamo=False`, tried when the dynamo exporter failed)",
        default="dynamo",
    )
    dynamic_batch: bool = doc(
        "model.fp32.onnx takes any batch; false: a batch of exactly 1 (the model's code fixes "
        "it, or the dynamic batch failed to export: see `fallback_reason`)",
        default=True,
    )
    fallback_reason: str | None = doc(
        "why the first path (dynamo, dynamic batch) was not used: its first cause; else null",
        default=None,
    )
    seconds: float | None = doc("wall time of the ONNX export, seconds", default=None)
    cached: bool = doc(
        "model.fp32.onnx is the graph of an earlier export of the same code and weights, "
        "checked to compute the model (`EDGEPACK_CACHE_DIR`; empty turns the cache off)",
        default=False,
    )


@dataclass
class Attempt:
    """One int8 variant the accuracy search tried."""

    method: str = doc("calibration method")
    float_layers: list[str] = doc("nodes left in float")
    tuning_accuracy: float = doc("top-1 on the tuning images, percent")
    drop: float = doc("fp32 - int8 tuning accuracy, points")
    chosen: bool = doc("the variant written as model.int8.onnx", default=False)
    qat_epochs: int | None = doc("a QAT attempt: its epochs, else null", default=None)


@dataclass
class LayerSensitivity:
    node: str = doc("ONNX node")
    op: str = doc("operator (with its fused activation)")
    tensor: str = doc("output tensor compared")
    cosine: float = doc("cosine similarity, int8 vs float")
    snr_db: float = doc("signal-to-noise ratio, dB")


@dataclass
class Qat:
    """Quantization-aware fine-tuning."""

    skipped: str | None = doc("why QAT did not run (the model entered as ONNX)", default=None)
    epochs: int | None = doc("QAT epochs", default=None)
    folded_batchnorms: int | None = doc("BatchNorms folded into convolutions", default=None)
    weights_simulated: int | None = doc("weights trained on the int8 grid", default=None)
    activations_simulated: int | None = doc("activations with tracked int8 ranges", default=None)
    loss: list[float] = doc("training loss per epoch", default_factory=list)
    tuning_accuracy_fp32: float | None = doc("the QAT model in float, percent", default=None)
    seconds: float | None = doc("QAT wall time", default=None)


@dataclass
class SearchCost:
    """What the int8 search spent, so its growth with the model is visible."""

    calibrations: int = doc("calibration runs: one per method tried (its ranges are cached)")
    evaluations: int = doc("full passes over the tuning images: the fp32 model and every attempt")
    tuning_images: int = doc("images per evaluation")
    evaluation_seconds: float = doc("wall time of those evaluations, seconds")
    sensitivity_passes: int = doc(
        "per-layer sensitivity passes (fp32 and int8 side by side), never one per layer: 1 for "
        "the report's table; 2 when float fallbacks were ranked on a variant other than the "
        "one chosen"
    )
    sensitivity_images: int = doc(
        "tuning images per sensitivity pass: up to 64, fewer (at least 8) when the layer "
        "outputs of an image are large, so a pass costs about as much on any net"
    )
    sensitivity_seconds: float = doc("wall time of the sensitivity passes, seconds")


@dataclass
class Quantization:
    """The int8 stage (run reports with int8 only)."""

    method: str = doc("calibration method chosen")
    reduce_range: bool = doc("model.int8.onnx has 7-bit weights")
    reduce_range_reason: str = doc("why (CPU features, device kind or the recipe)")
    per_channel: bool = doc("per-channel weight scales")
    float_layers: list[str] = doc("nodes left in float")
    fp32_tuning_accuracy: float = doc("fp32 model on the tuning images, percent")
    attempts: list[Attempt] = doc("every variant tried, in order")
    calibration: str = doc("the calibration images in words")
    within_budget: bool = doc(
        "the chosen variant loses at most `quantize.max_drop` (within one tuning image)"
    )
    sensitivity: list[LayerSensitivity] = doc("per layer, int8 against float")
    first_divergence: str | None = doc("first layer whose SNR falls below the threshold")
    seconds: float = doc("wall time of the search")
    qat: Qat | None = doc("null unless QAT ran or was skipped", default=None)
    cost: SearchCost | None = doc(
        "what the search spent (reports of edgepack 0.1 before this field: null)", default=None
    )


@dataclass
class Report:
    """report.json (of `edgepack run`) and checks/<target>.json (of `edgepack check`)."""

    schema_version: int = doc(f"{SCHEMA_VERSION} (this layout)")
    passed: bool = doc("`verdict` is `passed`")
    verdict: Literal["passed", "failed", "not_meaningful"] = doc(
        "`passed`: every artifact was validated (or skipped because its runtime is not in the "
        "recipe's `runtime.runtimes`) and holds every budget. `failed`: a budget does not hold, "
        "or an artifact was not validated (error, runtime missing, no result; `max_bytes` is "
        "still judged). `not_meaningful`: nothing failed, but the figures cannot mean anything: "
        "a built-in model's random initial weights, an eval set of one class, or a reference "
        "accuracy at chance level. Exit code 0 only for `passed`"
    )
    reasons: list[str] = doc(
        "why `passed` is false, one line each (empty when it passed); lines starting `not "
        "meaningful:` also appear in a `failed` verdict"
    )
    target: Target = doc("where it was validated")
    model: ModelInfo = doc("the model")
    data: DataInfo = doc("the data")
    recipe: dict[str, Any] = doc("the resolved recipe, every key (docs/recipes.md)")
    cpu: CpuInfo | None = doc("where validation ran")
    runtimes: dict[str, str] = doc("runtime package -> version on the validating machine")
    reference: Reference = doc("the original model on the eval images")
    artifacts: list[ArtifactRow] = doc("one row per artifact")
    parity: list[Parity] = doc(
        "every two validated artifacts: how often their top-1 agree (e.g. ONNX vs TFLite int8)",
        default_factory=list,
    )
    notes: list[str] = doc(
        "what a reader must know that does not decide the verdict: e.g. an accuracy budget "
        "finer than 3 eval images",
        default_factory=list,
    )
    compression: Compression | None = doc("run reports: the compression stage", default=None)
    export: ExportCheck | None = doc("run reports from a torch model: export parity", default=None)
    quantization: Quantization | None = doc("run reports with int8: the int8 stage", default=None)
    edgepack_version: str = doc("the edgepack that wrote it", default="")
    checked_dir: str | None = doc("checks: the output directory re-validated", default=None)

    def to_dict(self) -> dict[str, Any]:
        return to_json(self)

    @classmethod
    def from_dict(cls, data: Any) -> Report:
        """Typed, with the schema version checked first; raises TypedJsonError."""
        if not isinstance(data, dict):
            raise TypedJsonError("not a report (not a JSON object)")
        missing = [k for k in _IDENTIFYING if k not in data]
        if missing:
            raise TypedJsonError(f"not an edgepack report (no {', '.join(missing)})")
        version = data["schema_version"]
        if version != SCHEMA_VERSION:
            raise TypedJsonError(
                f"report schema_version {version!r}; this edgepack reads {SCHEMA_VERSION}"
            )
        return from_json(cls, data, "report")


def write_report(report: Report, path: Path) -> None:
    path.write_text(json.dumps(report.to_dict(), indent=2) + "\n")


def read_report(path: Path) -> Report:
    """A report file, typed; one-line InputFileError when it is unreadable or of another
    schema version."""
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise InputFileError(f"{path}: unreadable ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise InputFileError(f"{path}: not a report (not JSON: {exc})") from None
    try:
        return Report.from_dict(data)
    except TypedJsonError as exc:
        raise InputFileError(f"{path}: {exc}") from None
