"""The committed metadata_schema_py_generated.py is flatc's output for tflite-support's schema."""

from __future__ import annotations

import hashlib
import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
GENERATED = ROOT / "exporter" / "package" / "metadata_schema_py_generated.py"
sys.path.insert(0, str(ROOT / "scripts"))
import gen_metadata_schema  # noqa: E402


def test_header_names_the_installed_schema():
    fbs = gen_metadata_schema.installed_fbs()
    if fbs is None:
        pytest.skip("tflite-support not installed (pip install --no-deps tflite-support)")
    recorded = re.search(r"^#   sha256 ([0-9a-f]{64})$", GENERATED.read_text(), re.M)
    assert recorded and recorded.group(1) == hashlib.sha256(fbs.read_bytes()).hexdigest()


def test_module_is_current(tmp_path):
    fbs = gen_metadata_schema.installed_fbs()
    if fbs is None or shutil.which("flatc") is None:
        pytest.skip("needs tflite-support's metadata_schema.fbs and flatc to regenerate")
    assert gen_metadata_schema.main(["--out", str(tmp_path / "gen.py")]) == 0
    assert (tmp_path / "gen.py").read_text() == GENERATED.read_text(), (
        "stale: run python scripts/gen_metadata_schema.py"
    )
