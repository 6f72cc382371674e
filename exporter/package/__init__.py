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
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np

from exporter import __version__
from exporter.artifacts import load_index, verify_artifact
from exporter.common.atomic import atomic_dir, atomic_path, check_writable
from exporter.errors import PackageError
from exporter.outdir import (
    EVAL_BATCH,
    ONNX_FP32,
    ONNX_INT8,
    PACKAGE_MANIFEST,
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
)
from exporter.package.ort_format import ORT_CONFIG, ORT_MODEL, convert_to_ort
from exporter.package.usage import render_usage
from exporter.package.verify import (
    LABELS,
    MANIFEST_VERSION,
    SAMPLES,
    TFLITE,
    expected,
    measure,
    verify_zip,
)
from exporter.package.zipfile_det import zip_bytes
from exporter.report.schema import read_report
from runtime_check.batch import BatchError, load_batch

PLATFORMS = ("android", "ios")
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


def _why_failed(report: dict[str, Any], row: dict[str, Any]) -> str:
    said = [r for r in report.get("reasons", []) if r.startswith(f"{row['path']}: ")]
    if said:
        return "; ".join(said)
    missed = [n for n, b in row.get("budgets", {}).items() if not b["ok"]]
    return f"{row['path']}: " + (", ".join(missed) or str(row.get("status", "not validated")))


def run_level_reasons(report: dict[str, Any]) -> list[str]:
    """Reasons the run failed that no single artifact caused (shipping any artifact of such a
    run needs --allow-failed)."""
    paths = [r["path"] for r in report.get("artifacts", [])]
    return [r for r in report.get("reasons", []) if not any(r.startswith(f"{p}: ") for p in paths)]


def held_tflite(report: dict[str, Any], out_dir: Path) -> list[str]:
    """The TFLite artifacts of ``out_dir`` that held every budget, int8 first."""
    held = [r for r in _rows(report, out_dir, "tflite") if _held_budgets(r)]
    return [r["path"] for r in sorted(held, key=lambda r: r.get("precision") != "int8")]


def _rows(report: dict[str, Any], out_dir: Path, fmt: str) -> list[dict[str, Any]]:
    rows = report.get("artifacts", [])
    return [r for r in rows if r.get("format") == fmt and (out_dir / r["path"]).is_file()]


def _named(report: dict, out_dir: Path, name: str, fmt: str, allow_failed: bool) -> dict:
    """The report row of the artifact named by --artifact, if it may ship."""
    rows = {r["path"]: r for r in _rows(report, out_dir, fmt)}
    if name not in rows:
        have = ", ".join(rows) or "none"
        raise PackageError(f"--artifact {name}: not a {fmt} artifact of {out_dir} (it has: {have})")
    row = rows[name]
    if not _held_budgets(row) and not allow_failed:
        raise PackageError(
            f"--artifact {name} did not hold its budgets ({_why_failed(report, row)}); "
            "use --allow-failed to ship it anyway"
        )
    return row


def choose_tflite(
    report: dict[str, Any], out_dir: Path, allow_failed: bool, name: str | None = None
) -> dict[str, Any]:
    """The report row of the TFLite artifact to ship (see docs/package_manifest.md): ``name``
    if given, else int8 then fp32 among those that held their budgets; one that failed only
    with ``allow_failed`` and only when none held."""
    if name is not None:
        return _named(report, out_dir, name, "tflite", allow_failed)
    rows = _rows(report, out_dir, "tflite")
    if not rows:
        raise PackageError(
            f"{out_dir} has no TFLite artifact to package "
            "(the recipe's export.formats must include tflite)"
        )
    held = [r for r in rows if _held_budgets(r)]
    for candidates in (held, rows if allow_failed else []):
        for precision in ("int8", "fp32", None):
            for row in candidates:
                if precision is None or row.get("precision") == precision:
                    return row
    why = "; ".join(_why_failed(report, r) for r in rows)
    raise PackageError(
        f"no TFLite artifact in {out_dir} held its budgets ({why}); "
        "use --allow-failed to package one anyway"
    )


def choose_onnx(
    report: dict[str, Any], out_dir: Path, allow_failed: bool, name: str | None = None
) -> tuple[str, dict]:
    """The ONNX model to convert to ORT: ``name`` if given, else int8 if it held its budgets,
    else fp32 if it held them (or was not validated: it is always written, as every later
    stage's input); a failing one only with ``allow_failed``."""
    if name is not None:
        return name, _named(report, out_dir, name, "onnx", allow_failed)
    rows = {r["path"]: r for r in report.get("artifacts", []) if r.get("format") == "onnx"}
    for lenient in (False, True) if allow_failed else (False,):
        for onnx_name in (ONNX_INT8, ONNX_FP32):
            row = rows.get(onnx_name, {})
            usable = _held_budgets(row) or lenient or (onnx_name == ONNX_FP32 and not row)
            if (out_dir / onnx_name).is_file() and usable:
                return onnx_name, row
    failed = [_why_failed(report, r) for r in rows.values() if (out_dir / r["path"]).is_file()]
    if failed:
        raise PackageError(
            f"no ONNX model in {out_dir} held its budgets ({'; '.join(failed)}); "
            "use --allow-failed to convert one to ORT anyway"
        )
    raise PackageError(f"{out_dir} has no ONNX model to convert to ORT format")


def _split_artifacts(artifacts: tuple[str, ...]) -> dict[str, str]:
    """--artifact names by format (one TFLite, one ONNX at most)."""
    chosen: dict[str, str] = {}
    for name in artifacts:
        fmt = {".tflite": "tflite", ".onnx": "onnx"}.get(Path(name).suffix)
        if fmt is None:
            raise PackageError(f"--artifact {name}: not a .tflite or .onnx artifact name")
        if fmt in chosen:
            raise PackageError(f"--artifact given two {fmt} artifacts: {chosen[fmt]}, {name}")
        chosen[fmt] = name
    return chosen


def _check_verdict(
    report: dict[str, Any], out_dir: Path, allow_failed: bool, named: dict[str, str]
) -> None:
    """A failed run ships only what the user named and what held its budgets, or anything
    with --allow-failed; refused before any conversion."""
    if report.get("passed") or allow_failed:
        return
    reasons = "; ".join(report.get("reasons", [])) or "validation failed"
    own = run_level_reasons(report)
    if own:
        raise PackageError(
            f"{out_dir} failed validation ({'; '.join(own)}); "
            "use --allow-failed to package it anyway"
        )
    if "tflite" in named:
        return
    held = held_tflite(report, out_dir)
    offer = (
        f"{', '.join(held)} held its budgets: ship it with --artifact {held[0]}, or use "
        "--allow-failed"
        if held
        else "no TFLite artifact held its budgets; use --allow-failed to package one anyway"
    )
    raise PackageError(f"{out_dir} failed validation ({reasons}); {offer}")


def not_packaged_line(out_dir: Path, report: dict[str, Any]) -> str:
    """What `run --package` says after a failed run instead of packaging it."""
    held = held_tflite(report, out_dir) if not run_level_reasons(report) else []
    hint = (
        f"; `edgepack package {out_dir} --artifact {held[0]}` ships one that held its budgets"
        if held
        else ""
    )
    return f"package: not packaged, the run failed validation{hint}"


def _verify_files(out_dir: Path, names: list[str]) -> None:
    """The chosen artifacts are the files `edgepack run` wrote and validated (artifacts.json
    records their sha256 and size); a file it does not list (fp32 ONNX when ONNX was not
    exported) is the stage input that the validated artifacts were made from."""
    by_path = {a.path: a for a in load_index(out_dir, verify=False)}
    for name in names:
        if name in by_path:
            verify_artifact(out_dir, by_path[name])


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
    # load_batch decodes the float32 inputs of a batch that stores uint8 images + mean/std.
    try:
        batch = load_batch(path)
    except BatchError as exc:
        raise PackageError(str(exc)) from None
    return _npz_bytes(
        {k: batch[k][:SAMPLE_COUNT] for k in ("inputs", "images", "labels") if k in batch}
    )


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


@dataclass(frozen=True)
class _Choice:
    tflite: dict[str, Any]  # report row
    onnx: str
    onnx_row: dict[str, Any]
    failing: bool  # something shipped did not hold its budgets, or the run failed on its own


def _choose(
    report: dict[str, Any], out_dir: Path, allow_failed: bool, artifacts: tuple[str, ...]
) -> _Choice:
    named = _split_artifacts(artifacts)
    _check_verdict(report, out_dir, allow_failed, named)
    row = choose_tflite(report, out_dir, allow_failed, named.get("tflite"))
    onnx_name, onnx_row = choose_onnx(report, out_dir, allow_failed, named.get("onnx"))
    _verify_files(out_dir, [row["path"], onnx_name])
    blamed = [
        r for r in report.get("reasons", []) if r.startswith((f"{row['path']}: ", f"{onnx_name}: "))
    ]
    failing = (
        not _held_budgets(row)
        or bool(onnx_row and not _held_budgets(onnx_row))
        or bool(blamed or run_level_reasons(report))
    )
    return _Choice(row, onnx_name, onnx_row, failing)


def _inputs_of(report: dict[str, Any], out_dir: Path) -> tuple[list[str], dict[str, Any]]:
    classes = report.get("model", {}).get("classes") or []
    if not classes:
        raise PackageError(
            f"{out_dir / REPORT} has no class names (model.classes): labels.txt cannot be written"
        )
    norm = report.get("data", {}).get("normalization") or {}
    if not norm.get("mean") or not norm.get("std"):
        raise PackageError(f"{out_dir / REPORT} has no input normalization (data.normalization)")
    return [str(c) for c in classes], norm


def _validation(report: dict[str, Any], choice: _Choice) -> dict[str, Any]:
    target = report.get("target", {})
    return {
        "passed": bool(report.get("passed")),
        "reasons": report.get("reasons", []),
        "target": target.get("name"),
        "device": target.get("device"),
        "cpu": report.get("cpu", {}).get("model"),
        "reference_accuracy": report.get("reference", {}).get("accuracy"),
        "tflite": _summary(choice.tflite),
        "ort": _summary(choice.onnx_row) if choice.onnx_row else None,
    }


def _versions(report: dict[str, Any], opset: int | None) -> dict[str, Any]:
    return {
        "edgepack": __version__,
        "edgepack_run": report.get("edgepack_version"),
        "onnxruntime": _version("onnxruntime"),
        "ai-edge-litert": _version("ai-edge-litert"),
        "validated_with": report.get("runtimes", {}),
        "opset": opset,
        "tflite_metadata": "1.0.0",
    }


def build_files(
    out_dir: Path, platform: str, allow_failed: bool = False, artifacts: tuple[str, ...] = ()
) -> tuple[dict[str, bytes], dict[str, Any], float]:
    """Every file of the package (name -> bytes), the manifest, and the ORT conversion time."""
    if platform not in PLATFORMS:
        raise PackageError(f"unknown platform {platform!r} (one of: {', '.join(PLATFORMS)})")
    report = _load_report(out_dir)
    classes, norm = _inputs_of(report, out_dir)
    choice = _choose(report, out_dir, allow_failed, artifacts)

    labels = ("\n".join(classes) + "\n").encode()
    raw = (out_dir / choice.tflite["path"]).read_bytes()
    tflite_spec = _tflite_spec(raw, choice.tflite, norm)
    name = out_dir.resolve().name
    meta = build_metadata(_metadata_for(name, tflite_spec, classes, report))
    tflite = embed_metadata(raw, meta, {LABELS: labels})
    ort_result = convert_to_ort(out_dir / choice.onnx)
    opset = _onnx_opset(out_dir / choice.onnx)
    ort_spec = _ort_spec(ort_result.model, choice.onnx, choice.onnx_row, opset)
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
    manifest: dict[str, Any] = {
        "manifest_version": MANIFEST_VERSION,
        "name": name,
        "platform": platform,
        "allow_failed": choice.failing,
        "classes": classes,
        "models": {TFLITE: tflite_spec, ORT_MODEL: ort_spec},
        # What --verify compares against: the packaged models' answers on the packaged images.
        "expected": expected(measure(files, tflite_spec["input"]["layout"], len(classes))),
        "validation": _validation(report, choice),
        "versions": _versions(report, opset),
    }
    # USAGE.md reads the manifest, and the manifest lists USAGE.md: hash it last.
    files[USAGE] = render_usage(manifest, platform).encode()
    manifest["files"] = {
        n: {"sha256": _sha(files[n]), "bytes": len(files[n])} for n in sorted(files)
    }
    files[PACKAGE_MANIFEST] = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    return files, manifest, ort_result.seconds


def package_dir(
    out_dir: str | Path,
    platform: str,
    *,
    force: bool = False,
    allow_failed: bool = False,
    artifacts: tuple[str, ...] = (),
) -> PackageResult:
    """Write ``out_dir/package/<platform>/`` and ``out_dir/<name>-<platform>.zip``.

    ``artifacts`` names the TFLite and/or ONNX artifact to ship (see docs/package_manifest.md).
    """
    out_dir = Path(out_dir)
    if platform == "mcu":  # C++ sources for TensorFlow Lite Micro: exporter/package/mcu.py
        from exporter.package.mcu import package_mcu

        return package_mcu(out_dir, force=force, allow_failed=allow_failed, artifacts=artifacts)
    pkg = package_path(out_dir, platform)
    zip_path = package_zip(out_dir, platform)
    if platform in PLATFORMS:  # refuse early: nothing is converted when we could not write
        check_writable(pkg, force)
        check_writable(zip_path, force)
    files, manifest, seconds = build_files(out_dir, platform, allow_failed, artifacts)
    with atomic_dir(pkg, force=force) as tmp:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        with atomic_path(zip_path, force=force) as ztmp:
            ztmp.write_bytes(zip_bytes(files))
    return PackageResult(pkg, zip_path, manifest, seconds)


__all__ = [
    "LABELS",
    "PLATFORMS",
    "SAMPLES",
    "TFLITE",
    "PackageResult",
    "build_files",
    "choose_onnx",
    "choose_tflite",
    "held_tflite",
    "not_packaged_line",
    "package_dir",
    "verify_zip",
]
