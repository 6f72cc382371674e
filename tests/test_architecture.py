"""The import rules of docs/architecture.md, checked on the source (every import, lazy ones too).

A lazy import inside a function is still a dependency: the rules are about what a package may
need, not about what it costs to import, so the whole AST is walked.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# What each part of `exporter` may import from `exporter` (besides itself). A package or top-level
# module missing here fails the test, so a new one has to be placed in the map on purpose.
BASE = {"errors", "common", "recipe"}
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "common": {"errors"},
    "recipe": {"errors"},
    "outdir": set(),
    "artifacts": {"errors", "common", "outdir"},
    "models": BASE,
    "training": BASE | {"models", "inputs"},
    "inputs": BASE | {"models"},
    "compress": BASE | {"models", "training"},
    "onnx": BASE | {"models"},
    "quantize": BASE | {"models", "training", "onnx", "outdir"},
    "tflite": BASE,
    "report": BASE | {"artifacts", "outdir"},
    "targets": BASE | {"artifacts", "outdir", "report"},
    "package": BASE | {"artifacts", "outdir", "tflite", "report"},
    "docs": BASE | {"tflite", "report", "tuning"},
    "pipeline": BASE
    | {
        "artifacts",
        "outdir",
        "models",
        "training",
        "inputs",
        "compress",
        "onnx",
        "quantize",
        "tflite",
        "targets",
        "report",
        "package",
    },
    # `edgepack tune` runs the pipeline once per trial; nothing but cli and the API imports it.
    "tuning": BASE | {"pipeline", "inputs", "training", "report"},
    "cli": None,  # the command line may call anything
    "__init__": {"pipeline", "training", "tuning", "errors"},
    "__main__": {"cli"},
}

# Third-party libraries a part must not need. The TFLite writer works from ONNX alone (no torch);
# reports, targets and packaging work from files, so a device-side or CI-side tool can use them
# without the training stack.
FORBIDDEN_THIRD_PARTY: dict[str, set[str]] = {
    "tflite": {"torch", "torch_pruning", "onnxruntime", "tensorflow"},
    "report": {"torch", "onnx", "onnxruntime", "torch_pruning"},
    "targets": {"torch", "torch_pruning"},
    "package": {"torch", "torch_pruning", "tensorflow"},
    "artifacts": {"torch", "onnx"},
    "outdir": {"torch", "onnx", "numpy"},
    "recipe": {"torch", "onnx", "onnxruntime"},
    "errors": {"torch", "onnx", "numpy"},
    "common": {"torch", "onnx", "onnxruntime"},
}

# runtime_check runs on the device: numpy and a runtime, nothing else that is not stdlib.
RUNTIME_CHECK_ALLOWED = {"numpy", "onnxruntime", "ai_edge_litert", "tflite_runtime", "tflite_micro"}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            found.append((node.lineno, "." * node.level + (node.module or "")))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            found.append((node.lineno, str(node.args[0].value)))
    return found


def _part(path: Path) -> str:
    rel = path.relative_to(ROOT / "exporter").with_suffix("").parts
    return rel[0]


def _exporter_files() -> list[Path]:
    return sorted((ROOT / "exporter").rglob("*.py"))


def test_every_part_of_exporter_is_placed_in_the_map():
    parts = {_part(p) for p in _exporter_files()}
    assert parts - set(ALLOWED) == set(), "add the new package to ALLOWED and docs/architecture.md"


def test_exporter_parts_import_only_what_the_map_allows():
    bad = []
    for path in _exporter_files():
        part = _part(path)
        allowed = ALLOWED[part]
        for line, mod in _imports(path):
            assert not mod.startswith("."), f"{path}:{line} relative import {mod}"
            names = mod.split(".")
            if names[0] != "exporter" or len(names) == 1 or allowed is None:
                continue
            if names[1] != part and names[1] not in allowed:
                bad.append(f"{path.relative_to(ROOT)}:{line} {part} imports exporter.{names[1]}")
    assert bad == []


def test_parts_do_not_need_forbidden_libraries():
    bad = []
    for path in _exporter_files():
        forbidden = FORBIDDEN_THIRD_PARTY.get(_part(path), set())
        for line, mod in _imports(path):
            if mod.split(".")[0] in forbidden:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {mod}")
    assert bad == []


def test_runtime_check_needs_only_numpy_a_runtime_and_the_stdlib():
    bad = []
    for path in sorted((ROOT / "runtime_check").rglob("*.py")):
        for line, mod in _imports(path):
            top = mod.split(".")[0]
            if top in ("runtime_check", "__future__") or top in sys.stdlib_module_names:
                continue
            if top not in RUNTIME_CHECK_ALLOWED:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {mod}")
    assert bad == []


@pytest.mark.parametrize(
    "source, expected",
    [
        ("import torch\n", "torch"),
        ("def f():\n    from exporter.cli import main\n", "exporter.cli"),
        ("import importlib\nimportlib.import_module('onnx')\n", "onnx"),
    ],
)
def test_the_checker_sees_plain_lazy_and_dynamic_imports(tmp_path, source, expected):
    path = tmp_path / "m.py"
    path.write_text(source)
    assert expected in [m for _, m in _imports(path)]
