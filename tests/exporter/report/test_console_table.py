"""The console table (exporter.report.build.print_table) on a 100-column terminal."""

from __future__ import annotations

import copy

from rich.console import Console

from exporter.inputs.data import channel_stats, load_data
from exporter.report.build import CONSOLE_WIDTH, grouped_reasons, print_table
from exporter.report.page import fmt_ms
from tests.exporter.report.samples import check_report, failing_report, full_report


def _render(report: dict) -> list[str]:
    console = Console(width=CONSOLE_WIDTH, record=True, force_terminal=False, color_system=None)
    print_table(report, console)
    return console.export_text().splitlines()


def _seven_artifacts_failing_latency() -> dict:
    """A run with the longest artifact names and sizes in the millions, where two artifacts
    miss the same latency budget."""
    rep = full_report()
    names = [
        "model.fp32.onnx",
        "model.fp32.tflite",
        "model.int8.onnx",
        "model.int8.tflite",
        "model.fp32.sparse.onnx",
        "model.fp32.sparse.tflite",
        "model.int8.sparse.tflite",
    ]
    arts = []
    for i, name in enumerate(names):
        a = copy.deepcopy(rep["artifacts"][i % 3])
        a["path"] = name
        a["bytes"], a["gzip_bytes"] = 12_345_678 - i, 3_456_789 + i
        a["accuracy"] = 89.123 + i / 10
        a["accuracy_drop"] = 90.0 - a["accuracy"]
        a["model_rss_mb"] = 42.0 + i
        slow = name in ("model.fp32.onnx", "model.int8.onnx")
        a["latency_ms"] = {**a["latency_ms"], "p50": 40.0 + i, "p90": 61.25 + i if slow else 12.5}
        a["budgets"] = {
            "max_accuracy_drop": {"limit": 1.5, "value": a["accuracy_drop"], "ok": True},
            "max_latency_p90_ms": {"limit": 50.0, "value": a["latency_ms"]["p90"], "ok": not slow},
        }
        arts.append(a)
    rep["artifacts"] = arts
    rep["passed"], rep["verdict"] = False, "failed"
    rep["reasons"] = [
        f"{a['path']}: max_latency_p90_ms {a['latency_ms']['p90']:.4g} vs limit 50"
        for a in arts
        if not a["budgets"]["max_latency_p90_ms"]["ok"]
    ]
    return rep


def test_table_fits_100_columns_and_keeps_every_figure():
    rep = _seven_artifacts_failing_latency()
    lines = _render(rep)
    assert max(len(line) for line in lines) <= CONSOLE_WIDTH, "\n".join(lines)
    text = "\n".join(lines)
    assert "…" not in text  # nothing cut short to fit
    for a in rep["artifacts"]:
        row = next(line for line in lines if line.startswith(f"{a['path']} "))
        # Each figure whole on the artifact's own line, formatted as the table always did.
        for figure in (
            f"{a['bytes']:,}",
            f"{a['gzip_bytes']:,}",
            f"{a['accuracy']:.2f}",
            f"{a['accuracy_drop']:+.2f}",
            f"{a['agreement']:.4f}",
            f"{fmt_ms(a['latency_ms']['p50'])}/{fmt_ms(a['latency_ms']['p90'])}",
            f"{a['model_rss_mb']:.1f}",
        ):
            assert figure in row, (figure, row)
        failing = not a["budgets"]["max_latency_p90_ms"]["ok"]
        assert row.rstrip().endswith("FAIL p90" if failing else "ok"), row


def test_a_reason_shared_by_two_artifacts_is_said_once():
    text = " ".join(_render(_seven_artifacts_failing_latency()))
    assert text.count("max_latency_p90_ms") == 1, text
    assert text.count("p90 latency at most 50 ms") == 1, text
    said = text[text.index("max_latency_p90_ms") :]
    # With its values as the table rounds them (the line may wrap at a space).
    assert "model.fp32.onnx (61.2), model.int8.onnx (63.2)" in " ".join(said.split())


def test_grouped_reasons_keep_other_reasons_and_group_equal_ones():
    rep = failing_report()
    rep["reasons"].append("model.int8.onnx: not validated (ai-edge-litert is not installed)")
    rep["reasons"].insert(0, "not meaningful: every eval image is of one class")
    rep["artifacts"].append({**rep["artifacts"][1], "path": "model.int8.onnx"})
    lines = grouped_reasons(rep)
    assert lines == [
        "not meaningful: every eval image is of one class",
        "max_accuracy_drop (accuracy drop at most 1.5 points) failed by model.fp32.onnx (+10.00)",
        "max_bytes (file size at most 1,000,000 bytes) failed by model.fp32.onnx (2,000,000)",
        "not validated (ai-edge-litert is not installed): model.fp32.tflite, model.int8.onnx",
        "not validated (runner crashed: <segfault> [exit 139]): model.fp32.sparse.onnx",
    ]


def test_qemu_and_failing_samples_fit_too():
    for rep in (failing_report(), check_report(full_report())):
        lines = _render(rep)
        assert max(len(line) for line in lines) <= CONSOLE_WIDTH, "\n".join(lines)
        assert "…" not in "\n".join(lines)
        for a in rep["artifacts"]:
            assert any(line.startswith(a["path"] + " ") for line in lines), a["path"]
    # Under QEMU the instruction count is the figure; the emulated wall time is in the HTML.
    lines = _render(check_report(full_report()))
    assert any("2.000" in line for line in lines if line.startswith("model.fp32.onnx "))


def test_normalization_guessed_from_the_data_is_a_warning():
    rep = full_report()
    guessed = channel_stats(load_data("digits"))
    rep["data"]["normalization"] = {
        "mean": list(guessed.mean),
        "std": list(guessed.std),
        "source": guessed.source,
    }
    text = "\n".join(_render(rep))
    assert "warning: input normalization mean 0.3053, std 0.3759 is the statistics of digits" in (
        text.replace("\n", " ")
    )
    rep["data"]["normalization"]["source"] = "recorded at training in seed.pt.json"
    text = "\n".join(_render(rep))
    assert "warning" not in text
    assert (
        "input normalization: mean 0.3053, std 0.3759 (recorded at training in seed.pt.json)"
        in (text)
    )


def test_html_header_names_the_normalization_and_warns_on_a_guess():
    from exporter.report.html import render_html

    rep = full_report()
    rep["data"]["normalization"]["source"] = "statistics of digits (no --mean/--std)"
    page = render_html(rep)
    assert (
        "WARNING</b> input normalization guessed: mean 0.3, std 0.4 (statistics of digits" in page
    )
    rep["data"]["normalization"]["source"] = "user (--mean/--std)"
    page = render_html(rep)
    assert "input normalization: mean 0.3, std 0.4 (user (--mean/--std))" in page
    assert "guessed" not in page
