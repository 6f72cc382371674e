"""exporter.outdir owns the output directory's names: the helpers, and no copy elsewhere."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from exporter import outdir

EXPORTER = Path(outdir.__file__).resolve().parent


def test_artifact_names():
    assert outdir.artifact_name("fp32", "onnx") == outdir.ONNX_FP32 == "model.fp32.onnx"
    assert outdir.artifact_name("int8", "tflite") == outdir.TFLITE_INT8 == "model.int8.tflite"
    assert outdir.artifact_name("int8", "tflite", "sparse") == "model.int8.sparse.tflite"
    assert outdir.sparse_name("model.fp32.onnx") == "model.fp32.sparse.onnx"
    with pytest.raises(ValueError, match="not a dense artifact"):
        outdir.sparse_name("model.fp32.sparse.onnx")
    with pytest.raises(ValueError, match="unknown artifact format"):
        outdir.artifact_name("fp32", "tf")


def test_directory_paths(tmp_path):
    out = tmp_path / "small"
    assert outdir.check_report(out, "rpi4") == out / "checks" / "rpi4.json"
    assert outdir.check_html(out, "rpi4") == out / "checks" / "rpi4.html"
    assert outdir.is_check_report(outdir.check_report(out, "rpi4"))
    assert outdir.calibration_cache(out, "minmax") == out / "calibration.minmax.json"
    assert outdir.package_path(out, "android") == out / "package" / "android"
    assert outdir.package_zip(out, "ios") == out / "small-ios.zip"
    (out / "checks").mkdir(parents=True)
    for name in ("b.json", "a.json", "a.html"):
        (out / "checks" / name).write_text("{}")
    assert [p.name for p in outdir.check_reports(out)] == ["a.json", "b.json"]
    assert outdir.ARTIFACT_INDEX != outdir.PACKAGE_MANIFEST


def _names() -> set[str]:
    return {
        v
        for k, v in vars(outdir).items()
        if k.isupper() and isinstance(v, str) and "." in v and not k.startswith("_")
    }


# The stages that write or read the output directory; exporter.tflite and exporter.cli name
# files only in help texts and docstrings, which this does not look at.
STAGES = [
    "pipeline.py",
    "artifacts.py",
    "report",
    "targets",
    "quantize",
    "package/__init__.py",
    "package/usage.py",
]


def _string_constants(path: Path) -> set[str]:
    """String literals in code, docstrings left out."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        if id(node) not in docstrings
    }


def test_no_stage_spells_an_output_name_itself():
    names = _names()
    assert {"report.json", "artifacts.json", "model.int8.portable.onnx"} <= names
    files = []
    for entry in STAGES:
        path = EXPORTER / entry
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    offenders = {str(f.relative_to(EXPORTER)): sorted(names & _string_constants(f)) for f in files}
    assert {f: n for f, n in offenders.items() if n} == {}
