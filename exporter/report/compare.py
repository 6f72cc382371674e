"""`edgepack compare`: several reports side by side, as one console table and one HTML page.

An input is an output directory (its report.json and every checks/<target>.json, so the
targets one model was checked on compare too) or a report JSON file. Everything is read and
checked before anything is printed or written: a bad input is one line and exit 2.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from exporter.common.atomic import atomic_write_text
from exporter.errors import InputFileError
from exporter.outdir import REPORT, check_reports, is_check_report
from exporter.report.html import artifacts_table, is_emulated, scatter_section
from exporter.report.page import (
    VERDICT_WORDS,
    Cell,
    artifact_verdict,
    budget_words,
    cell,
    chips,
    esc,
    fmt,
    fmt_ms,
    page,
    report_verdict,
    table,
)
from exporter.report.schema import read_report


@dataclass(frozen=True)
class Entry:
    """One report to compare; ``label`` names it in the table, the legend and the page.

    ``report`` is the typed report as JSON (every field present), what the pages render.
    """

    label: str
    source: Path
    report: dict


def _label_for(path: Path) -> str:
    """out/report.json -> 'out'; out/checks/rpi4.json -> 'out:rpi4'; x.json -> 'x'."""
    if path.name == REPORT:
        return path.resolve().parent.name
    if is_check_report(path):
        return f"{path.resolve().parent.parent.name}:{path.stem}"
    return path.stem


def _files_of(arg: str) -> list[Path]:
    path = Path(arg)
    if path.is_dir():
        if not (path / REPORT).is_file():
            raise InputFileError(f"{path}: not an edgepack output directory (no {REPORT})")
        return [path / REPORT, *check_reports(path)]
    if path.is_file():
        return [path]
    raise InputFileError(f"{path}: no such file or directory")


def load_entries(inputs: Sequence[str | os.PathLike]) -> list[Entry]:
    """Every report named by ``inputs``, in order, each file once, labels made unique."""
    entries: list[Entry] = []
    seen: set[Path] = set()
    labels: dict[str, int] = {}
    for arg in inputs:
        for path in _files_of(os.fspath(arg)):
            key = path.resolve()
            if key in seen:
                continue
            seen.add(key)
            report = read_report(path).to_dict()
            label = _label_for(path)
            labels[label] = labels.get(label, 0) + 1
            if labels[label] > 1:  # two dirs of the same name from different parents
                label = f"{label} ({labels[label]})"
            entries.append(Entry(label, path, report))
    if not entries:
        raise InputFileError("nothing to compare")
    return entries


# --- console ------------------------------------------------------------------------------


def print_compare(entries: Sequence[Entry], console: Console) -> None:
    """One row per report x artifact, then each report's verdict."""
    table_ = Table(title=f"edgepack compare — {len(entries)} report(s)")
    cols = [
        "run",
        "model",
        "target",
        "artifact",
        "bytes",
        "acc %",
        "drop",
        "p50 ms",
        "p90 ms",
        "Minsn/inf",
        "verdict",
    ]
    for col in cols:
        table_.add_column(
            col,
            justify="right"
            if col in ("bytes", "acc %", "drop", "p50 ms", "p90 ms", "Minsn/inf")
            else "left",
            # Numbers and names never wrap; the verdict and labels wrap to fit.
            no_wrap=col not in ("run", "model", "verdict"),
        )
    emulated = False
    for e in entries:
        model = str(e.report["model"].get("spec", "?")).replace("\\", "/").rsplit("/", 1)[-1]
        for a in e.report["artifacts"]:
            word, _ = artifact_verdict(a)
            lat = a.get("latency_ms") or {}
            # Emulated wall time is marked, never shown as if it were a measurement.
            mark = "*" if is_emulated(a) else ""
            emulated = emulated or bool(mark)
            insn = a.get("instructions_per_inference")
            cells = [
                e.label,
                model,
                e.report["target"].get("name", "?"),
                a.get("path"),
                fmt(a.get("bytes"), ","),
                fmt(a.get("accuracy"), ".2f"),
                fmt(a.get("accuracy_drop"), "+.2f"),
                fmt_ms(lat.get("p50")) + mark if lat else "–",
                fmt_ms(lat.get("p90")) + mark if lat else "–",
                fmt(None if insn is None else insn / 1e6, ".3f"),
                word if a.get("status") == "ok" else f"{word}: {a.get('reason') or ''}",
            ]
            # Text, not markup: a path or reason with [brackets] must print as it is.
            table_.add_row(*(Text(str(c)) for c in cells))
    console.print(table_)
    if emulated:
        console.print("* emulated wall time (QEMU), not a measurement of the device")
    for e in entries:
        state = report_verdict(e.report)
        line = Text(f"{e.label}: ")
        line.append(VERDICT_WORDS[state], style=_VERDICT_STYLES[state])
        reasons = "; ".join(e.report.get("reasons") or [])
        console.print(line + Text(f" — {reasons}" if reasons else ""))


# --- HTML ---------------------------------------------------------------------------------


def render_compare_html(entries: Sequence[Entry]) -> str:
    """The comparison page, in the style of report.html; deterministic for the same inputs."""
    pairs = [(e.label, e.report) for e in entries]
    body = [
        f"<h1>Comparison of {len(entries)} report(s)</h1>",
        '<p class="sub">'
        + "<br>".join(f"<b>{esc(e.label)}</b>: {esc(e.source)}" for e in entries)
        + "</p>",
        "<h2>Verdicts</h2>",
        _verdicts(entries),
        "<h2>Artifacts</h2>",
        artifacts_table(pairs),
        "<h2>Accuracy against size and latency</h2>",
        scatter_section(pairs),
        "<h2>Where each ran</h2>",
        _machines(entries),
    ]
    return page(f"edgepack compare — {len(entries)} report(s)", body)


def write_compare_html(
    entries: Sequence[Entry], path: str | os.PathLike, force: bool = False
) -> Path:
    return atomic_write_text(path, render_compare_html(entries), force=force)


_VERDICT_STYLES = {"passed": "bold green", "failed": "bold red", "not_meaningful": "bold yellow"}


def _verdicts(entries: Sequence[Entry]) -> str:
    rows = []
    for e in entries:
        r = e.report
        passed = bool(r.get("passed"))
        budgets = (r.get("recipe") or {}).get("budgets") or {}
        words = "; ".join(budget_words(n, lim) for n, lim in budgets.items() if lim is not None)
        ref = (r.get("reference") or {}).get("accuracy")
        state = report_verdict(r)
        tag = f'<span class="tag {"ok" if passed else "bad"}">{VERDICT_WORDS[state]}</span>'
        rows.append(
            (
                [
                    cell(e.label),
                    cell(r["model"].get("spec")),
                    cell(r["target"].get("name")),
                    cell(r["target"].get("device")),
                    cell(fmt(ref, ".2f"), num=True),
                    cell(words or "none set"),
                    Cell(tag),
                    cell("; ".join(r.get("reasons") or []) or "–"),
                ],
                "" if passed else "bad",
            )
        )
    return table(
        ["run", "model", "target", "device", "reference acc %", "budgets", "verdict", "reasons"],
        rows,
        (4,),
    )


def _machines(entries: Sequence[Entry]) -> str:
    rows = []
    for e in entries:
        cpu = e.report.get("cpu") or {}
        runtimes = e.report.get("runtimes") or {}
        reason = (e.report.get("quantization") or {}).get("reduce_range_reason")
        rows.append(
            (
                [
                    cell(e.label),
                    cell(cpu.get("machine", "–")),
                    cell(cpu.get("emulated") or cpu.get("model") or "–"),
                    cell(fmt(cpu.get("cores"), "d"), num=True),
                    Cell(chips(cpu.get("features") or []) or "–"),
                    Cell(chips(f"{k} {v}" for k, v in runtimes.items()) or "–"),
                    cell(reason or "–"),
                ],
                "",
            )
        )
    return table(
        ["run", "machine", "CPU", "cores", "ISA features", "runtimes", "int8 weight range"],
        rows,
        (3,),
    )
