"""What a package's models answer, recorded when it is packaged and compared by ``--verify``.

``measure`` runs the packaged model.tflite (LiteRT) and model.ort (ONNX Runtime) on the packaged
reference images (sample_inputs.npz, or one image of zeros when the run kept none);
``expected`` turns that into the manifest's ``expected`` block: per model the top-1 class of
every image, its margin over the runner-up, its score, a tolerance, the accuracy on the images'
labels, and the top-1 agreement of the two models. ``verify_zip`` checks a zip's files against
the manifest (sizes from the central directory before anything is read, then sha256), then
runs both models and fails when they answer otherwise than recorded.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from exporter.common.typed_json import TypedJsonError, from_json
from exporter.errors import PackageError
from exporter.outdir import PACKAGE_MANIFEST, PACKAGE_TFLITE
from exporter.package.metadata import read_metadata_buffer
from exporter.package.ort_format import ORT_MODEL
from exporter.package.zipfile_det import ZipLimits, check_entries, read_entry, read_zip

MANIFEST_VERSION = 2  # 2: the `expected` block, which --verify compares against
TFLITE = PACKAGE_TFLITE
LABELS = "labels.txt"
SAMPLES = "sample_inputs.npz"
MODELS = (TFLITE, ORT_MODEL)
MAX_SAMPLES = 1024
# Score differences below this share of a model's score range are kernel noise (another CPU,
# another LiteRT build); an int8 output step is ~0.4 % of it, another model's answers ~100 %.
TOLERANCE = 0.02
MANIFEST_BYTES = 16 << 20


# ----- the manifest, as --verify reads it -------------------------------------------------


@dataclass
class _File:
    sha256: str
    bytes: int


@dataclass
class _Input:
    layout: Literal["nhwc", "nchw"]


@dataclass
class _Model:
    source: str
    input: _Input


@dataclass
class ExpectedModel:
    """What one packaged model answered on the reference images at packaging time."""

    top1: list[int]
    margin: list[float]  # top-1 score minus the runner-up's
    score: list[float]  # the top-1 score
    tolerance: float
    accuracy: float | None  # percent of the images' labels; null without labels


@dataclass
class Expected:
    inputs: str  # sample_inputs.npz or zeros
    samples: int
    agreement: float  # top-1 agreement of model.tflite and model.ort
    models: dict[str, ExpectedModel]


@dataclass
class Manifest:
    manifest_version: int
    classes: list[str]
    files: dict[str, _File]
    models: dict[str, _Model]
    expected: Expected
    allow_failed: bool = field(default=False)


def read_manifest(data: bytes) -> Manifest:
    try:
        raw = json.loads(data)
    except ValueError as exc:
        raise PackageError(f"{PACKAGE_MANIFEST} is not JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise PackageError(f"{PACKAGE_MANIFEST} is not a JSON object")
    version = raw.get("manifest_version")
    if version != MANIFEST_VERSION:
        raise PackageError(
            f"{PACKAGE_MANIFEST}: manifest_version {version!r}, this edgepack verifies "
            f"{MANIFEST_VERSION} (re-package the output directory with this edgepack)"
        )
    try:
        manifest = from_json(Manifest, raw, PACKAGE_MANIFEST)
    except TypedJsonError as exc:
        raise PackageError(str(exc)) from None
    for name in MODELS:
        if name not in manifest.models:
            raise PackageError(f"{PACKAGE_MANIFEST}: models has no {name!r}")
        if name not in manifest.expected.models:
            raise PackageError(f"{PACKAGE_MANIFEST}: expected.models has no {name!r}")
    return manifest


# ----- running the two models --------------------------------------------------------------


def _npy(name: str, data: bytes) -> np.ndarray:
    """One array of an .npz, its header checked against its bytes before anything is allocated
    (numpy allocates what the header declares), never unpickled."""
    fh = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(fh)
        readers = {
            (1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0,
        }
        if version not in readers:
            raise ValueError(f".npy format {version} is not one numpy writes for plain arrays")
        shape, _, dtype = readers[version](fh)
        if dtype.hasobject:
            raise ValueError("object arrays are refused")
        if int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != len(data) - fh.tell():
            raise ValueError(f"header declares shape {shape} {dtype}, not what it holds")
        fh.seek(0)
        return np.lib.format.read_array(fh, allow_pickle=False)
    except (ValueError, EOFError, OverflowError) as exc:
        raise PackageError(f"{SAMPLES}: {name} is not a readable array ({exc})") from None


def load_samples(data: bytes) -> dict[str, np.ndarray]:
    """sample_inputs.npz: ``inputs`` (float32 NCHW), optional ``images``, ``labels``."""
    limits = ZipLimits(entries=8, entry_bytes=1 << 30, total_bytes=1 << 30)
    try:
        members = read_zip(data, limits)
    except PackageError as exc:
        raise PackageError(f"{SAMPLES}: {exc}") from None
    arrays = {n.removesuffix(".npy"): _npy(n, d) for n, d in members.items()}
    x = arrays.get("inputs")
    if x is None or x.ndim != 4 or x.dtype != np.float32 or not 0 < len(x) <= MAX_SAMPLES:
        raise PackageError(f"{SAMPLES}: needs `inputs`, 1 to {MAX_SAMPLES} float32 NCHW images")
    for key in ("images", "labels"):
        if key in arrays and len(arrays[key]) != len(x):
            raise PackageError(f"{SAMPLES}: {len(arrays[key])} {key} for {len(x)} inputs")
    return arrays


def _tflite_inputs(
    samples: dict[str, np.ndarray], detail: dict[str, Any], layout: str
) -> np.ndarray:
    x = samples["inputs"].astype(np.float32)  # normalized, NCHW, as eval_batch.npz holds it
    if layout == "nhwc":
        x = x.transpose(0, 2, 3, 1)
    dtype = np.dtype(detail["dtype"])
    if dtype == np.float32:
        return x
    scale, zp = detail["quantization"]
    if dtype == np.uint8 and (not scale or (scale == 1.0 and zp == 0)) and "images" in samples:
        return samples["images"].astype(np.uint8)  # raw pixels, normalization inside the model
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zp), info.min, info.max).astype(dtype)


def _dequant(y: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    scale, zp = detail["quantization"]
    return (y.astype(np.float32) - zp) * scale if scale else y.astype(np.float32)


def _run_tflite(model: bytes, samples: dict[str, np.ndarray], layout: str) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=model)
    interp.allocate_tensors()
    (inp,), (out,) = interp.get_input_details(), interp.get_output_details()
    x = _tflite_inputs(samples, inp, layout)
    rows = []
    for i in range(len(x)):
        interp.set_tensor(inp["index"], x[i : i + 1])
        interp.invoke()
        rows.append(_dequant(interp.get_tensor(out["index"]), out))
    return np.concatenate(rows)


def _run_ort(model: bytes, samples: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x = samples["inputs"].astype(np.float32)
    return np.concatenate([sess.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])


def _zeros(ort_model: bytes) -> dict[str, np.ndarray]:
    """One image of zeros: without samples it still proves both models load and run."""
    import onnxruntime as ort

    sess = ort.InferenceSession(ort_model, providers=["CPUExecutionProvider"])
    shape = [1 if isinstance(d, str) or d is None else d for d in sess.get_inputs()[0].shape]
    return {"inputs": np.zeros(shape, np.float32)}


def _guarded(name: str, run: Any) -> Any:
    # The runtimes raise their own exception types (ValueError, RuntimeError, pybind11's Fail)
    # for a file that is not their format or does not fit the inputs: each is this package's
    # fault, not edgepack's, so it becomes one line.
    runtime = "LiteRT" if name == TFLITE else "ONNX Runtime"
    try:
        return run()
    except PackageError:
        raise
    except Exception as exc:  # noqa: BLE001
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PackageError(f"{name} does not load or run in {runtime} ({first})") from None


@dataclass
class Measured:
    inputs: str
    logits: dict[str, np.ndarray]
    labels: np.ndarray | None


def measure(files: dict[str, bytes], tflite_layout: str, classes: int) -> Measured:
    """Both packaged models' scores on the packaged reference images."""
    if files[TFLITE][4:8] != b"TFL3":
        raise PackageError(f"{TFLITE} is not a TFLite model (no TFL3 identifier) for LiteRT")
    if SAMPLES in files:
        samples, source = load_samples(files[SAMPLES]), SAMPLES
    else:
        samples, source = _guarded(ORT_MODEL, lambda: _zeros(files[ORT_MODEL])), "zeros"
    logits = {
        TFLITE: _guarded(TFLITE, lambda: _run_tflite(files[TFLITE], samples, tflite_layout)),
        ORT_MODEL: _guarded(ORT_MODEL, lambda: _run_ort(files[ORT_MODEL], samples)),
    }
    for name, y in logits.items():
        if y.ndim != 2 or not np.isfinite(y).all():
            raise PackageError(f"{name} gives non-finite scores or not one row an image")
        if y.shape != (len(samples["inputs"]), classes):
            raise PackageError(
                f"{name} gives {y.shape[1]} scores an image but labels.txt has {classes} classes"
            )
    return Measured(source, logits, samples.get("labels"))


def _accuracy(top1: np.ndarray, labels: np.ndarray | None) -> float | None:
    return None if labels is None else float((top1 == labels).mean() * 100)


def expected(m: Measured) -> dict[str, Any]:
    """The manifest's ``expected`` block (see docs/package_manifest.md)."""
    models = {}
    for name, y in m.logits.items():
        ranked = np.sort(y, axis=1)
        models[name] = {
            "top1": [int(c) for c in y.argmax(1)],
            "margin": [float(v) for v in ranked[:, -1] - ranked[:, -2]] if y.shape[1] > 1 else [],
            "score": [float(v) for v in ranked[:, -1]],
            "tolerance": float(TOLERANCE * max(float(np.ptp(y)), 1e-6)),
            "accuracy": _accuracy(y.argmax(1), m.labels),
        }
    top = [m.logits[n].argmax(1) for n in MODELS]
    return {
        "inputs": m.inputs,
        "samples": len(top[0]),
        "agreement": float((top[0] == top[1]).mean()),
        "models": models,
    }


def _off(y: np.ndarray, rec: ExpectedModel) -> tuple[int, int]:
    """(images answered otherwise than recorded, near-ties where a flip is kernel noise)."""
    n = len(y)
    top1 = y.argmax(1)
    scores = y[np.arange(n), rec.top1]
    margin = rec.margin or [np.inf] * n
    ties = [i for i in range(n) if margin[i] <= 2 * rec.tolerance]
    off = [
        i
        for i in range(n)
        if (top1[i] != rec.top1[i] and i not in ties)
        or abs(float(scores[i]) - rec.score[i]) > rec.tolerance
    ]
    return len(off), len(ties)


def compare(m: Measured, exp: Expected) -> dict[str, Any]:
    """The measured figures, or PackageError naming every one that differs from the record."""
    n = len(m.logits[TFLITE])
    if m.inputs != exp.inputs or n != exp.samples:
        raise PackageError(
            f"the models ran on {n} image(s) from {m.inputs}, the manifest recorded "
            f"{exp.samples} from {exp.inputs}"
        )
    problems, ties = [], 0
    for name in MODELS:
        rec = exp.models[name]
        if len(rec.top1) != n or len(rec.score) != n:
            raise PackageError(f"{PACKAGE_MANIFEST}: expected.models.{name} is not for {n} images")
        off, near = _off(m.logits[name], rec)
        ties = max(ties, near)
        if off:
            problems.append(f"{name} on {off} of {n} images")
    top = [m.logits[name].argmax(1) for name in MODELS]
    agreement = float((top[0] == top[1]).mean())
    if agreement < exp.agreement - ties / n - 1e-9:
        problems.append(f"top-1 agreement {agreement:.3f}, {exp.agreement:.3f} recorded")
    result = {"inputs": m.inputs, "samples": n, "tflite_ort_agreement": agreement}
    for name, key in ((TFLITE, "tflite_accuracy"), (ORT_MODEL, "ort_accuracy")):
        acc, rec_acc = _accuracy(m.logits[name].argmax(1), m.labels), exp.models[name].accuracy
        result[key] = acc
        if acc is not None and rec_acc is not None and acc < rec_acc - 100 * ties / n - 1e-9:
            problems.append(f"{name} accuracy {acc:.2f} %, {rec_acc:.2f} % recorded")
    if problems:
        raise PackageError(
            f"answers on {m.inputs} differ from those recorded at packaging: " + "; ".join(problems)
        )
    return result


# ----- verify --------------------------------------------------------------------------------


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_checked(path: Path, reader: Any = None) -> tuple[dict[str, bytes], Any]:
    """The zip's files, each checked against the manifest: sizes from the central directory
    first, so that nothing the manifest does not announce is ever inflated, then sha256.
    ``reader`` parses the manifest (default: the mobile one); what it returns has ``files``."""
    with zipfile.ZipFile(path) as zf:
        infos = {i.filename: i for i in check_entries(zf, os.path.getsize(path), ZipLimits())}
        head = infos.get(PACKAGE_MANIFEST)
        if head is None:
            raise PackageError(f"no {PACKAGE_MANIFEST} (not an edgepack package)")
        if head.file_size > MANIFEST_BYTES:
            raise PackageError(f"{PACKAGE_MANIFEST} declares {head.file_size} bytes")
        manifest = (reader or read_manifest)(read_entry(zf, head))
        listed = manifest.files
        missing = sorted(set(listed) - set(infos))
        extra = sorted(set(infos) - set(listed) - {PACKAGE_MANIFEST})
        altered = sorted(
            n for n in set(listed) & set(infos) if infos[n].file_size != listed[n].bytes
        )
        files = {
            n: read_entry(zf, infos[n])
            for n in sorted(set(listed) & set(infos))
            if n not in altered
        }
    altered = sorted(altered + [n for n, d in files.items() if _sha(d) != listed[n].sha256])
    problems = (
        ([f"altered (sha256 or size mismatch): {', '.join(altered)}"] if altered else [])
        + ([f"missing: {', '.join(missing)}"] if missing else [])
        + ([f"extra (not in the manifest): {', '.join(extra)}"] if extra else [])
    )
    if problems:
        raise PackageError("fails verification: " + "; ".join(problems))
    return files, manifest


def _check_labels(files: dict[str, bytes]) -> None:
    for required in (TFLITE, ORT_MODEL, LABELS):
        if required not in files:
            raise PackageError(f"the manifest does not list {required}")
    if files[TFLITE][4:8] != b"TFL3":
        raise PackageError(f"{TFLITE} is not a TFLite model (no TFL3 identifier) for LiteRT")
    if read_metadata_buffer(files[TFLITE]) is None:
        raise PackageError(f"{TFLITE} has no TFLITE_METADATA")
    # labels.txt rides in model.tflite as a stored zip entry: its declared size must be the
    # package's labels.txt before a byte of it is read.
    try:
        with zipfile.ZipFile(io.BytesIO(files[TFLITE])) as packed:
            info = packed.getinfo(LABELS)
            ok = info.compress_type == zipfile.ZIP_STORED and info.file_size == len(files[LABELS])
            embedded = read_entry(packed, info) if ok else None
    except (zipfile.BadZipFile, KeyError, OSError, EOFError):
        embedded = None
    if embedded != files[LABELS]:
        raise PackageError(f"{TFLITE} does not carry the package's {LABELS}")


def verify_zip(path: str | Path, run_models: bool = True) -> dict[str, Any]:
    """Check every file of a package zip against its manifest, then run both models on the
    packaged reference images and compare their answers with the manifest's record.

    Raises PackageError (one line, naming the zip) at the first kind of problem found.
    """
    path = Path(path)
    if not path.is_file():
        raise PackageError(f"{path}: no such file")
    try:
        files, manifest = _read_checked(path)
        _check_labels(files)
        result = {"zip": str(path), "files": len(files) + 1, "allow_failed": manifest.allow_failed}
        if run_models:
            layout = manifest.models[TFLITE].input.layout
            measured = measure(files, layout, len(manifest.classes))
            result.update(compare(measured, manifest.expected))
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
        raise PackageError(f"{path}: not a readable zip ({exc})") from None
    except PackageError as exc:
        raise PackageError(f"{path}: {exc}") from None
    return result
