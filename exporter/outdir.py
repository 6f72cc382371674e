"""The names of everything edgepack writes into an output directory (``--out``), in one place.

Every stage, `edgepack check`, `compare` and `package` find files through this module, so a
name changes here or nowhere. runtime_check's own remote names stay in runtime_check, which
may not import the exporter.

    model.<precision>.<format>           model.fp32.onnx, model.int8.tflite, ...
    model.<precision>.sparse.<format>    sparse-stored copies, where they are smaller
    model.int8.portable.onnx             full 8-bit QDQ twin of a 7-bit (reduce_range) int8 ONNX
    calibration.<method>.json            activation ranges shared by every int8 variant
    eval_batch.npz, artifacts.json, report.json, report.html
    .edgepack-output                     marks the directory as edgepack's (--force checks it)
    checks/<target>.json, checks/<target>.html
    qat/                                 the QAT model's fp32 ONNX and its calibration
    package/<platform>/, <dirname>-<platform>.zip
"""

from __future__ import annotations

from pathlib import Path

# In every `edgepack run` output directory (a small JSON: edgepack version, command), so that
# --force replaces only directories edgepack wrote, never one of the user's.
OUTPUT_MARKER = ".edgepack-output"
REPORT = "report.json"
REPORT_HTML = "report.html"
EVAL_BATCH = "eval_batch.npz"
# What the exporter knows about each artifact (exporter.artifacts); not the package manifest.
ARTIFACT_INDEX = "artifacts.json"
CHECKS_DIR = "checks"
QAT_DIR = "qat"
PACKAGE_DIR = "package"
# Inside package/<platform>/ and the zip: every file with its sha256 (docs/package_manifest.md).
PACKAGE_MANIFEST = "manifest.json"
# The TFLite model inside a package (with metadata and labels); the ORT model's name is
# exporter.package.ort_format.ORT_MODEL.
PACKAGE_TFLITE = "model.tflite"

ONNX_FP32 = "model.fp32.onnx"
ONNX_INT8 = "model.int8.onnx"
TFLITE_FP32 = "model.fp32.tflite"
TFLITE_INT8 = "model.int8.tflite"
ONNX_INT16X8 = "model.int16x8.onnx"
# Written only when model.int8.onnx has 7-bit weights: TFLite's int8 kernels take 8 bits on
# every CPU, so the int8 TFLite model is converted from this twin (same calibration ranges).
ONNX_INT8_PORTABLE = "model.int8.portable.onnx"

_EXTENSIONS = {"onnx": "onnx", "tflite": "tflite"}


def artifact_name(precision: str, fmt: str, storage: str = "dense") -> str:
    """``model.<precision>[.sparse].<format>``; ``fmt`` is ``onnx`` or ``tflite``."""
    if fmt not in _EXTENSIONS:
        raise ValueError(f"unknown artifact format {fmt!r}")
    middle = "" if storage == "dense" else f".{storage}"
    return f"model.{precision}{middle}.{_EXTENSIONS[fmt]}"


def sparse_name(dense: str) -> str:
    """The name of the sparse-stored copy of the dense artifact ``dense``."""
    stem, dot, ext = dense.rpartition(".")
    if not dot or stem.endswith(".sparse"):
        raise ValueError(f"{dense} is not a dense artifact name")
    return f"{stem}.sparse.{ext}"


def calibration_cache(directory: Path, method: str) -> Path:
    return directory / f"calibration.{method}.json"


def check_report(out_dir: Path, target: str) -> Path:
    """Where `edgepack check` writes its report for ``target``; the page is beside it."""
    return out_dir / CHECKS_DIR / f"{target}.json"


def check_html(out_dir: Path, target: str) -> Path:
    return check_report(out_dir, target).with_suffix(".html")


def check_reports(out_dir: Path) -> list[Path]:
    """Every check report of ``out_dir``, sorted by name."""
    return sorted((out_dir / CHECKS_DIR).glob("*.json"))


def is_check_report(path: Path) -> bool:
    return path.parent.name == CHECKS_DIR


def package_path(out_dir: Path, platform: str) -> Path:
    return out_dir / PACKAGE_DIR / platform


def package_zip(out_dir: Path, platform: str) -> Path:
    return out_dir / f"{out_dir.resolve().name}-{platform}.zip"
