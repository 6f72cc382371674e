"""``edgepack package``: turn a validated output directory into an app-ready bundle.

``package_dir`` picks the TFLite artifact the run validated, embeds TFLite Model Metadata and
labels.txt into it, converts the ONNX model to ORT format, and writes ``DIR/package/<platform>/``
plus a deterministic ``DIR/<dirname>-<platform>.zip`` (both atomically). ``verify_zip`` checks a
zip against its manifest and runs both models. The manifest's schema: docs/package_manifest.md.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np

from exporter import __version__
from exporter.common.atomic import atomic_dir, atomic_path, check_writable
from exporter.errors import PackageError
from exporter.outdir import (
    EVAL_BATCH,
    ONNX_FP32,
    ONNX_INT8,
    PACKAGE_MANIFEST,
    PACKAGE_TFLITE,
    REPORT,
    package_path,
    package_zip,
)
from exporter.package.metadata import (
    ClassifierOutputMeta,
    ImageInputMeta,
    ModelMeta,
    build_metadata,
    embed_metadata,
    read_metadata_buffer,
)
from exporter.package.ort_format import ORT_CONFIG, ORT_MODEL, convert_to_ort
from exporter.package.usage import render_usage
from exporter.package.zipfile_det import read_zip, zip_bytes
from exporter.report.schema import read_report

PLATFORMS = ("android", "ios")
MANIFEST_VERSION = 1
TFLITE = PACKAGE_TFLITE
LABELS = "labels.txt"
SAMPLES = "sample_inputs.npz"
USAGE = "USAGE.md"
SAMPLE_COUNT = 16  # enough for --verify to compare the two runtimes, small enough to ship
_COLOR = {1: "GRAYSCALE", 3: "RGB"}


@dataclass(frozen=True)
class PackageResult:
    dir: Path
    zip: Path
    manifest: dict[str, Any]
    ort_seconds: float


# ----- choosing what to ship ---------------------------------------------------------------


def _load_report(out_dir: Path) -> dict[str, Any]:
    """The run's report, checked against the schema (version and types) before it is used."""
    path = out_dir / REPORT
    if not out_dir.is_dir() or not path.is_file():
        raise PackageError(f"{out_dir} is not an edgepack output directory (no {REPORT})")
    return read_report(path).to_dict()


def _held_budgets(row: dict[str, Any]) -> bool:
    return row.get("status") == "ok" and all(b["ok"] for b in row.get("budgets", {}).values())


def choose_tflite(report: dict[str, Any], out_dir: Path, allow_failed: bool) -> dict[str, Any]:
    """The report row of the TFLite artifact to ship (see docs/package_manifest.md)."""
    rows = [
        r
        for r in report.get("artifacts", [])
        if r.get("format") == "tflite" and (out_dir / r["path"]).is_file()
    ]
    if not rows:
        raise PackageError(
            f"{out_dir} has no TFLite artifact to package "
            "(the recipe's export.formats must include tflite)"
        )
    ok = [r for r in rows if _held_budgets(r) or allow_failed]
    for precision in ("int8", "fp32"):
        for row in ok:
            if row.get("precision") == precision:
                return row
    if ok:
        return ok[0]
    raise PackageError(
        f"no TFLite artifact in {out_dir} held its budgets (use --allow-failed to package anyway)"
    )


def choose_onnx(report: dict[str, Any], out_dir: Path, allow_failed: bool) -> tuple[str, dict]:
    """The ONNX model to convert to ORT: int8 if it held its budgets, else fp32."""
    rows = {r["path"]: r for r in report.get("artifacts", []) if r.get("format") == "onnx"}
    for name in (ONNX_INT8, ONNX_FP32):
        row = rows.get(name, {})
        # fp32 ONNX is always written (it is every later stage's input), reported or not.
        usable = _held_budgets(row) or allow_failed or (name == ONNX_FP32 and not row)
        if (out_dir / name).is_file() and usable:
            return name, row
    raise PackageError(f"{out_dir} has no ONNX model to convert to ORT format")


# ----- describing the models ---------------------------------------------------------------


def _tflite_io(model: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=model)
    (inp,), (out,) = interp.get_input_details(), interp.get_output_details()
    return inp, out


def _quant(detail: dict[str, Any]) -> tuple[float | None, int | None]:
    scale, zp = detail["quantization"]
    return (float(scale), int(zp)) if scale else (None, None)


def _tflite_spec(model: bytes, row: dict[str, Any], norm: dict[str, Any]) -> dict[str, Any]:
    inp, out = _tflite_io(model)
    layout = (row.get("tflite") or {}).get("input_layout") or "nhwc"
    shape = [int(d) for d in inp["shape"]]
    channels = shape[3] if layout == "nhwc" else shape[1]
    dtype = np.dtype(inp["dtype"]).name
    scale, zp = _quant(inp)
    o_scale, o_zp = _quant(out)
    return {
        "source": row["path"],
        "precision": row.get("precision"),
        "input": {
            "name": inp["name"],
            "shape": shape,
            "layout": layout,
            "dtype": dtype,
            "scale": scale,
            "zero_point": zp,
            "mean": list(norm["mean"]),
            "std": list(norm["std"]),
            "color": _COLOR.get(channels, "UNKNOWN"),
            "pixel_range": [0, 255],
            # A uint8 input takes camera pixels as they are: the model normalizes.
            "normalization_in_model": dtype == "uint8",
        },
        "output": {
            "name": out["name"],
            "shape": [int(d) for d in out["shape"]],
            "dtype": np.dtype(out["dtype"]).name,
            "scale": o_scale,
            "zero_point": o_zp,
            "kind": "logits",
        },
    }


def _ort_spec(model: bytes, source: str, row: dict[str, Any], opset: int | None) -> dict:
    import onnxruntime as ort

    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    kind = inp.type.removeprefix("tensor(").removesuffix(")")
    dtype = {"float": "float32", "double": "float64"}.get(kind, kind)
    return {
        "source": source,
        "precision": row.get("precision", source.split(".")[1]),
        "opset": opset,
        "input": {"name": inp.name, "shape": list(inp.shape), "layout": "nchw", "dtype": dtype},
        "output": {"name": out.name, "shape": list(out.shape), "kind": "logits"},
    }


def _onnx_opset(path: Path) -> int | None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _metadata_for(name: str, spec: dict[str, Any], classes: list[str], report: dict) -> ModelMeta:
    inp = spec["input"]
    h, w, c = inp["shape"][1:4] if inp["layout"] == "nhwc" else [inp["shape"][i] for i in (2, 3, 1)]
    if inp["normalization_in_model"]:
        mean, std = (0.0,) * c, (1.0,) * c
        lo, hi = (0.0,) * c, (255.0,) * c
    else:
        mean = tuple(m * 255.0 for m in inp["mean"])
        std = tuple(s * 255.0 for s in inp["std"])
        lo = tuple((0.0 - m) / s for m, s in zip(mean, std, strict=True))
        hi = tuple((255.0 - m) / s for m, s in zip(mean, std, strict=True))
    return ModelMeta(
        name=name,
        description=f"{report['model']['spec']} image classifier ({len(classes)} classes), "
        f"{spec['precision']} TFLite validated by edgepack on "
        f"{report['target']['name']}",
        version=__version__,
        author="edgepack",
        license="Apache-2.0",
        input=ImageInputMeta(
            name="image",
            description=f"{h}x{w} {_COLOR.get(c, 'UNKNOWN')} image",
            color_space=_COLOR.get(c, "UNKNOWN"),
            width=int(w),
            height=int(h),
            mean=mean,
            std=std,
            stats_min=lo,
            stats_max=hi,
        ),
        output=ClassifierOutputMeta(
            name="logits",
            description="unnormalized class scores (apply softmax for probabilities)",
            labels_file=LABELS,
            labels_description="class names, one per line",
        ),
    )


# ----- files -------------------------------------------------------------------------------


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An .npz whose bytes depend only on the arrays (np.savez stamps the current time)."""
    members = {}
    for key, arr in arrays.items():
        buf = io.BytesIO()
        np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
        members[f"{key}.npy"] = buf.getvalue()
    return zip_bytes(members)


def _samples(out_dir: Path) -> bytes | None:
    path = out_dir / EVAL_BATCH
    if not path.is_file():
        return None
    with np.load(path) as batch:
        arrays = {k: batch[k][:SAMPLE_COUNT] for k in ("inputs", "images", "labels") if k in batch}
    return _npz_bytes(arrays) if "inputs" in arrays else None


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _version(dist: str) -> str | None:
    try:
        return importlib_metadata.version(dist)
    except importlib_metadata.PackageNotFoundError:
        return None


def _summary(row: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "accuracy",
        "accuracy_drop",
        "agreement",
        "latency_ms",
        "runtime",
        "runtime_version",
        "delegate",
        "bytes",
        "status",
        "budgets",
    )
    return {"artifact": row.get("path"), **{k: row.get(k) for k in keys}}


def build_files(
    out_dir: Path, platform: str, allow_failed: bool = False
) -> tuple[dict[str, bytes], dict[str, Any], float]:
    """Every file of the package (name -> bytes), the manifest, and the ORT conversion time."""
    if platform not in PLATFORMS:
        raise PackageError(f"unknown platform {platform!r} (one of: {', '.join(PLATFORMS)})")
    report = _load_report(out_dir)
    passed = bool(report.get("passed"))
    if not passed and not allow_failed:
        reasons = "; ".join(report.get("reasons", [])) or "validation failed"
        raise PackageError(
            f"{out_dir} failed validation ({reasons}); use --allow-failed to package it anyway"
        )
    classes = report.get("model", {}).get("classes") or []
    if not classes:
        raise PackageError(
            f"{out_dir / REPORT} has no class names (model.classes): labels.txt cannot be written"
        )
    norm = report.get("data", {}).get("normalization") or {}
    if not norm.get("mean") or not norm.get("std"):
        raise PackageError(f"{out_dir / REPORT} has no input normalization (data.normalization)")
    row = choose_tflite(report, out_dir, allow_failed)
    onnx_name, onnx_row = choose_onnx(report, out_dir, allow_failed)

    labels = ("\n".join(str(c) for c in classes) + "\n").encode()
    raw = (out_dir / row["path"]).read_bytes()
    tflite_spec = _tflite_spec(raw, row, norm)
    name = out_dir.resolve().name
    meta = build_metadata(_metadata_for(name, tflite_spec, classes, report))
    tflite = embed_metadata(raw, meta, {LABELS: labels})
    ort_result = convert_to_ort(out_dir / onnx_name)
    ort_spec = _ort_spec(ort_result.model, onnx_name, onnx_row, _onnx_opset(out_dir / onnx_name))
    ort_spec["deterministic_conversion"] = ort_result.deterministic

    files: dict[str, bytes] = {
        TFLITE: tflite,
        ORT_MODEL: ort_result.model,
        ORT_CONFIG: ort_result.config.encode(),
        LABELS: labels,
    }
    samples = _samples(out_dir)
    if samples is not None:
        files[SAMPLES] = samples
    target = report.get("target", {})
    manifest: dict[str, Any] = {
        "manifest_version": MANIFEST_VERSION,
        "name": name,
        "platform": platform,
        "allow_failed": not passed,
        "classes": [str(c) for c in classes],
        "models": {TFLITE: tflite_spec, ORT_MODEL: ort_spec},
        "validation": {
            "passed": passed,
            "reasons": report.get("reasons", []),
            "target": target.get("name"),
            "device": target.get("device"),
            "cpu": report.get("cpu", {}).get("model"),
            "reference_accuracy": report.get("reference", {}).get("accuracy"),
            "tflite": _summary(row),
            "ort": _summary(onnx_row) if onnx_row else None,
        },
        "versions": {
            "edgepack": __version__,
            "edgepack_run": report.get("edgepack_version"),
            "onnxruntime": _version("onnxruntime"),
            "ai-edge-litert": _version("ai-edge-litert"),
            "validated_with": report.get("runtimes", {}),
            "opset": ort_spec["opset"],
            "tflite_metadata": "1.0.0",
        },
    }
    # USAGE.md reads the manifest, and the manifest lists USAGE.md: hash it last.
    files[USAGE] = render_usage(manifest, platform).encode()
    manifest["files"] = {
        n: {"sha256": _sha(files[n]), "bytes": len(files[n])} for n in sorted(files)
    }
    files[PACKAGE_MANIFEST] = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    return files, manifest, ort_result.seconds


def package_dir(
    out_dir: str | Path, platform: str, *, force: bool = False, allow_failed: bool = False
) -> PackageResult:
    """Write ``out_dir/package/<platform>/`` and ``out_dir/<name>-<platform>.zip``."""
    out_dir = Path(out_dir)
    pkg = package_path(out_dir, platform)
    zip_path = package_zip(out_dir, platform)
    if platform in PLATFORMS:  # refuse early: nothing is converted when we could not write
        check_writable(pkg, force)
        check_writable(zip_path, force)
    files, manifest, seconds = build_files(out_dir, platform, allow_failed)
    with atomic_dir(pkg, force=force) as tmp:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        with atomic_path(zip_path, force=force) as ztmp:
            ztmp.write_bytes(zip_bytes(files))
    return PackageResult(pkg, zip_path, manifest, seconds)


# ----- verification ------------------------------------------------------------------------


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


def _run_models(files: dict[str, bytes], manifest: dict[str, Any]) -> dict[str, Any]:
    import onnxruntime as ort
    from ai_edge_litert.interpreter import Interpreter

    spec = manifest["models"][TFLITE]
    interp = Interpreter(model_content=files[TFLITE])
    interp.allocate_tensors()
    (inp,), (out,) = interp.get_input_details(), interp.get_output_details()
    sess = ort.InferenceSession(files[ORT_MODEL], providers=["CPUExecutionProvider"])
    o_in = sess.get_inputs()[0]
    if SAMPLES in files:
        with np.load(io.BytesIO(files[SAMPLES])) as z:
            samples = {k: z[k] for k in z.files}
        source = SAMPLES
    else:  # no samples shipped: zeros still prove that both models load and run
        shape = [1 if isinstance(d, str) or d is None else d for d in o_in.shape]
        samples = {"inputs": np.zeros(shape, np.float32)}
        source = "zeros"
    x_tfl = _tflite_inputs(samples, inp, spec["input"]["layout"])
    tfl, orl = [], []
    for i in range(len(samples["inputs"])):
        interp.set_tensor(inp["index"], x_tfl[i : i + 1])
        interp.invoke()
        tfl.append(_dequant(interp.get_tensor(out["index"]), out))
        orl.append(sess.run(None, {o_in.name: samples["inputs"][i : i + 1].astype(np.float32)})[0])
    tfl_logits, ort_logits = np.concatenate(tfl), np.concatenate(orl)
    if not (np.isfinite(tfl_logits).all() and np.isfinite(ort_logits).all()):
        raise PackageError("a packaged model produced non-finite outputs")
    classes = len(manifest["classes"])
    if tfl_logits.shape[1] != classes or ort_logits.shape[1] != classes:
        raise PackageError(
            f"model outputs {tfl_logits.shape[1]} / {ort_logits.shape[1]} "
            f"scores but labels.txt has {classes} classes"
        )
    agree = float((tfl_logits.argmax(1) == ort_logits.argmax(1)).mean())
    result = {"inputs": source, "samples": len(tfl_logits), "tflite_ort_agreement": agree}
    if "labels" in samples:
        labels = samples["labels"]
        result["tflite_accuracy"] = float((tfl_logits.argmax(1) == labels).mean() * 100)
        result["ort_accuracy"] = float((ort_logits.argmax(1) == labels).mean() * 100)
    return result


def verify_zip(path: str | Path, run_models: bool = True) -> dict[str, Any]:
    """Check every file of a package zip against its manifest, then load and run both models.

    Raises PackageError naming the first kind of problem found (altered, missing, extra).
    """
    path = Path(path)
    if not path.is_file():
        raise PackageError(f"{path}: no such file")
    files = read_zip(str(path))
    if PACKAGE_MANIFEST not in files:
        raise PackageError(f"{path}: no {PACKAGE_MANIFEST} (not an edgepack package)")
    try:
        manifest = json.loads(files[PACKAGE_MANIFEST])
        listed: dict[str, dict[str, Any]] = manifest["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise PackageError(f"{path}: {PACKAGE_MANIFEST} unreadable ({exc})") from None
    missing = sorted(set(listed) - set(files))
    extra = sorted(set(files) - set(listed) - {PACKAGE_MANIFEST})
    altered = sorted(
        n
        for n in set(listed) & set(files)
        if _sha(files[n]) != listed[n].get("sha256") or len(files[n]) != listed[n].get("bytes")
    )
    problems = (
        ([f"altered (sha256 mismatch): {', '.join(altered)}"] if altered else [])
        + ([f"missing: {', '.join(missing)}"] if missing else [])
        + ([f"extra (not in the manifest): {', '.join(extra)}"] if extra else [])
    )
    if problems:
        raise PackageError(f"{path} fails verification: " + "; ".join(problems))
    for required in (TFLITE, ORT_MODEL, LABELS):
        if required not in files:
            raise PackageError(f"{path}: the manifest does not list {required}")
    if read_metadata_buffer(files[TFLITE]) is None:
        raise PackageError(f"{path}: {TFLITE} has no TFLITE_METADATA")
    try:
        with zipfile.ZipFile(io.BytesIO(files[TFLITE])) as packed:
            embedded = packed.read(LABELS)
    except (zipfile.BadZipFile, KeyError):
        embedded = None
    if embedded != files[LABELS]:
        raise PackageError(f"{path}: {TFLITE} does not carry the package's {LABELS}")
    result = {"zip": str(path), "files": len(files), "allow_failed": manifest.get("allow_failed")}
    if run_models:
        result.update(_run_models(files, manifest))
    return result
