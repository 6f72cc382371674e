"""`edgepack --help`, `targets` and other light commands must not import the heavy libraries.

Importing torch alone costs seconds; a command that only prints text would pay it every time.
Checked by the modules a fresh interpreter has loaded, not by wall-clock time.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = (
    "torch",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "matplotlib",
    "ai_edge_litert",
    "torch_pruning",
    "PIL",
    "sklearn",
    "scipy",
)

PROBE = """
import json, sys
import exporter.cli
try:
    exporter.cli.main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in {heavy!r} if m in sys.modules)
print("\\nPROBE " + json.dumps({{"code": code, "heavy": heavy}}))
"""


def loaded_after(*args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.rsplit("\nPROBE ", 1)[-1]
    return json.loads(line)


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["--version"],
        ["targets"],
        ["targets", "--json"],
        ["targets", "x86_64"],
        ["train", "--help"],
        ["run", "--help"],
        ["compare", "--help"],
    ],
)
def test_light_commands_import_no_heavy_library(args):
    res = loaded_after(*args)
    assert res["code"] in (0, None), res
    assert res["heavy"] == [], f"`edgepack {' '.join(args)}` imported {res['heavy']}"


def test_probe_sees_heavy_imports():
    # The probe itself must be able to fail: `inspect` of a missing .onnx imports onnx.
    res = loaded_after("inspect", "/nonexistent/model.onnx")
    assert "onnx" in res["heavy"], res
