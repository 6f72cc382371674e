"""report.html: verdict, artifact rows, plots, missing sections, escaping, no external resource."""

from __future__ import annotations

import copy
import re

import pytest

from exporter.report.html import render_html, write_html
from tests.exporter.report.samples import (
    assert_self_contained,
    check_report,
    failing_report,
    full_report,
    parse_page,
)


def _rows(page: str) -> list[str]:
    return re.findall(r"<tr[^>]*>.*?</tr>", page, flags=re.S)


def _row_with(page: str, text: str) -> str:
    rows = [r for r in _rows(page) if f">{text}<" in r]
    assert rows, f"no table row shows {text!r}"
    return rows[0]


def _verdict(page: str) -> str:
    return re.search(r'<div class="verdict[^"]*" id="verdict">.*?</div>', page, re.S).group(0)


def test_full_report_verdict_rows_plots_and_sections():
    rep = full_report()
    page = render_html(rep)
    parsed = assert_self_contained(page)
    verdict = _verdict(page)
    assert "PASSED" in verdict and "FAILED" not in verdict
    # The verdict is the first thing after the title, and each budget is stated in words.
    assert page.index('id="verdict"') < page.index("<h2>Artifacts</h2>")
    assert "accuracy drop at most 1.5 points" in verdict
    assert "file size at most 1,000,000 bytes" in verdict
    assert "p90 latency at most 50 ms" in verdict
    assert "min_agreement" in verdict  # a budget not set is said to be not set
    for art in rep["artifacts"]:
        row = _row_with(page, art["path"])
        assert f"{art['bytes']:,}" in row and f"{art['accuracy']:.2f}" in row
        assert f"{art['accuracy_drop']:+.2f}" in row and ">ok<" in row
    # Accuracy-vs-size, accuracy-vs-latency and the sparsity bars, as inline SVG.
    assert parsed.tags.count("svg") == 3
    assert {"plot-size", "plot-latency", "plot-sparsity"} <= set(
        re.findall(r'aria-label="([^"]+)"', page)
    )
    # The accuracy floor is drawn: reference 90 - max drop 1.5.
    assert "budget ≥ 88.50 %" in page
    # Sensitivity: cosine and SNR per layer, the first diverging layer highlighted.
    mark = _row_with(page, "node_fc")
    assert mark.startswith('<tr class="mark">') and "12.5" in mark and "0.970000" in mark
    assert "node_fc</b> (highlighted)" in page
    # Attempts: both, the chosen one marked.
    assert "minmax" in page and _row_with(page, "percentile").startswith('<tr class="mark">')
    # What drove choices: CPU features and the reduce_range reason; the recipe as key=value.
    assert "avx512_vnni" in page and "full 8-bit weights" in page
    assert "budgets.max_bytes</span>=<span>1000000" in page
    assert "emulated" not in page  # nothing here is emulated


def test_failing_report_with_missing_sections():
    """ONNX input (nothing pruned), no int8, one artifact failing, one skipped, one errored."""
    rep = failing_report()
    page = render_html(rep)
    parsed = assert_self_contained(page)
    verdict = _verdict(page)
    assert "FAILED" in verdict and "PASSED</span> accuracy" not in verdict
    assert "model.fp32.onnx has +10.00 points" in verdict
    assert "model.fp32.onnx has 2,000,000" in verdict
    for reason in rep["reasons"]:
        assert f"<li>{reason.replace('<', '&lt;').replace('>', '&gt;')}</li>" in verdict
    bad = _row_with(page, "model.fp32.onnx")
    assert bad.startswith('<tr class="bad">')
    assert '<td class="num bad">+10.00</td>' in bad and '<td class="num bad">2,000,000</td>' in bad
    # QEMU: instruction count shown, wall time flagged as emulated.
    assert "1.235" in bad and "emu</sup>" in bad and "M instr / image" in page
    assert "ai-edge-litert is not installed" in _row_with(page, "model.fp32.tflite")
    assert "runner crashed: &lt;segfault&gt;" in _row_with(page, "model.fp32.sparse.onnx")
    # Only the validated artifact is plotted; no sparsity plot for a model that entered as ONNX.
    assert parsed.tags.count("svg") == 2
    assert "skipped: the model entered as ONNX" in page and "nothing was pruned" in page
    assert "int8 quantization did not run: the recipe&#x27;s precisions are fp32" in page
    assert "qemu-aarch64 8.2 -cpu cortex-a53" in page


def test_text_from_the_report_is_escaped():
    rep = failing_report()
    rep["artifacts"][0]["path"] = "<img src=x onerror=alert(1)>.onnx"
    rep["reasons"].append('<script>alert("x")</script>')
    page = render_html(rep)
    assert "<script" not in page and "<img" not in page and "<evil>" not in page
    assert "&lt;script&gt;" in page and "/models/&lt;evil&gt;&amp;co.onnx" in page
    assert_self_contained(page)


def test_check_report_and_minimal_report_render():
    page = render_html(check_report(full_report()))
    assert_self_contained(page)
    assert "a re-check of /somewhere/out" in page and "rpi4-qemu" in page
    assert "emu</sup>" in page and "2.000" in page  # instructions of every artifact
    # The smallest document the schema allows: no recipe, no cpu, no artifacts.
    minimal = {
        "schema_version": 1,
        "passed": False,
        "reasons": ["no artifact could be validated"],
        "target": {"name": "t"},
        "model": {"spec": "m"},
        "reference": {},
        "artifacts": [],
    }
    page = render_html(minimal)
    assert_self_contained(page)
    assert "FAILED" in page and "no artifact could be validated" in page
    assert "<svg" not in page and "This report lists no artifact" in page


def test_nothing_validated_has_no_plots():
    rep = failing_report()
    rep["artifacts"] = [a for a in rep["artifacts"] if a["status"] != "ok"]
    page = render_html(rep)
    assert "<svg" not in page and "nothing to plot" in page
    assert "UNCHECKED" in _verdict(page)


def test_output_is_deterministic_and_written_atomically(tmp_path):
    rep = full_report()
    first = render_html(rep)
    assert render_html(copy.deepcopy(rep)) == first
    # No timestamps or per-process hashes leak into the SVG.
    assert "Date" not in first and "<metadata" not in first
    ids = re.findall(r'\bid="([^"]+)"', first)
    assert len(ids) == len(set(ids)), "two figures share an id"
    path = write_html(rep, tmp_path / "report.html")
    assert path.read_text(encoding="utf-8") == first
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]
    assert parse_page(first).text  # parses as HTML


def test_the_self_contained_check_catches_external_resources():
    """The check above would fail on a page that fetches anything."""
    for bad in (
        '<img src="https://cdn.example/x.png">',
        '<a href="//example.com">x</a>',
        '<link rel="stylesheet" href="x.css">',
        '<svg><use xlink:href="http://a#b"/></svg>',
        '<div style="background: url(http://x/y.png)"></div>',
    ):
        with pytest.raises(AssertionError):
            assert_self_contained(f"<html><body>{bad}</body></html>")
