"""`edgepack compare`: several output dirs / report files -> one table and one HTML page."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.exporter.report.samples import (
    assert_self_contained,
    check_report,
    failing_report,
    full_report,
)
from tests.helpers import assert_one_line_error, invoke


def _write(path: Path, report: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report))
    return path


@pytest.fixture
def dirs(tmp_path) -> tuple[Path, Path]:
    """Two output dirs as `edgepack run` leaves them; the first also checked on rpi4-qemu."""
    a, b = tmp_path / "alpha", tmp_path / "beta"
    _write(a / "report.json", full_report())
    _write(a / "checks" / "rpi4-qemu.json", check_report(full_report()))
    _write(b / "report.json", failing_report())
    return a, b


def _table_rows(output: str) -> list[str]:
    """Data rows of the rich table (a long cell wraps onto lines with an empty artifact cell)."""
    rows = []
    for line in output.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) == 11 and cells[3]:
            rows.append(line)
    return rows


def test_compare_two_dirs(dirs, tmp_path):
    a, b = dirs
    html = tmp_path / "cmp.html"
    res = invoke("compare", a, b, "--html", html)
    assert res.exit_code == 0, res.output
    rows = _table_rows(res.output)
    # alpha: 3 artifacts, alpha:rpi4-qemu: 3, beta: 3 (one failing, one skipped, one error).
    assert len(rows) == 9, res.output
    assert sum("alpha:rpi4-qemu" in r for r in rows) == 3
    assert sum(r.startswith("│ beta ") for r in rows) == 3
    assert any("model.fp32.onnx" in r and "FAIL max_" in r for r in rows if "beta" in r)
    assert any("skipped: ai-edge" in r for r in rows)
    assert any("2.000" in r for r in rows)  # the QEMU check's instructions, in millions
    assert "beta: FAILED" in res.output and "alpha: PASSED" in res.output
    assert "<segfault> [exit 139]" in res.output  # printed as text, not as rich markup
    assert res.output.rstrip().endswith(f"html: {html}")
    page = html.read_text()
    parsed = assert_self_contained(page)
    assert parsed.tags.count("svg") == 2  # accuracy vs size, accuracy vs latency
    for label in ("alpha", "alpha:rpi4-qemu", "beta"):
        assert f"<b>{label}</b>" in page
    assert page.count("model.int8.onnx</td>") == 2 and page.count("model.fp32.onnx</td>") == 3
    # Different accuracy floors are drawn once each and say whose they are.
    assert "budget ≥ 88.50 %" in page


def test_compare_one_dir_with_its_check_and_files(dirs, tmp_path):
    a, _ = dirs
    html = tmp_path / "one.html"
    res = invoke("compare", a, "--html", html)
    assert res.exit_code == 0, res.output
    rows = _table_rows(res.output)
    assert len(rows) == 6 and sum("alpha:rpi4-qemu │ seed-cnn │ rpi4-qemu" in r for r in rows) == 3
    assert "emulated" in res.output  # the check's latencies are flagged
    # Report files work too; a file named twice (directly and via its dir) counts once.
    res = invoke(
        "compare", a / "report.json", a, a / "checks" / "rpi4-qemu.json", "--html", html, "--force"
    )
    assert res.exit_code == 0, res.output
    assert len(_table_rows(res.output)) == 6
    assert_self_contained(html.read_text())


def test_compare_default_html_path(dirs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = invoke("compare", dirs[0])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "compare.html").is_file()


def test_compare_bad_inputs_write_nothing(dirs, tmp_path):
    a, _ = dirs
    html = tmp_path / "bad.html"
    not_json = tmp_path / "notes.json"
    not_json.write_text("hello")
    not_report = _write(tmp_path / "other.json", {"name": "x"})
    old = _write(tmp_path / "old.json", {**full_report(), "schema_version": 99})
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    cases = [
        ((tmp_path / "missing",), "no such file or directory"),
        ((empty_dir,), "not an edgepack output directory (no report.json)"),
        ((a, not_json), "not a report (not JSON"),
        ((not_report,), "not an edgepack report (no schema_version"),
        ((old,), "schema_version 99"),
    ]
    for args, fragment in cases:
        assert_one_line_error(invoke("compare", *args, "--html", html), fragment)
        assert not html.exists(), args
    # An existing page is kept unless --force.
    html.write_text("keep me")
    assert_one_line_error(invoke("compare", a, "--html", html), "already exists")
    assert html.read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".bad.html")] == []
