"""report.json (schema in docs/report_schema.md) and the console table made from it."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from exporter.artifacts import Artifact
from runtime_check.verdict import judge_artifact, parity, verdict

SCHEMA_VERSION = 1

_MEASURED = (
    "bytes",
    "gzip_bytes",
    "accuracy",
    "agreement",
    "max_abs_diff",
    "latency_ms",
    "threads",
    "runtime",
    "runtime_version",
    "delegate",
    "peak_rss_mb",
    "model_rss_mb",
    "input",
    "samples",
    "status",
    "reason",
    "instructions_per_inference",
    "emulated",
)


def build_report(
    *,
    target: dict,
    model: dict,
    data: dict,
    recipe: dict,
    reference: dict,
    artifacts: list[Artifact],
    check: dict,
    extra: dict | None = None,
) -> dict:
    """Merge what the exporter wrote with what runtime_check measured, and judge it."""
    budgets = recipe["budgets"]
    by_name = {r["path"]: r for r in check["results"]}
    rows = []
    for art in artifacts:
        measured = by_name.get(art.path, {"status": "error", "reason": "not checked"})
        row = {
            "path": art.path,
            "format": art.format,
            "precision": art.precision,
            "storage": art.storage,
        }
        row.update({k: measured[k] for k in _MEASURED if k in measured})
        if measured.get("status") == "ok":
            row["accuracy_drop"] = reference["accuracy"] - measured["accuracy"]
        row["budgets"] = judge_artifact(measured, reference["accuracy"], budgets)
        row.update(art.extra)
        rows.append(row)
    passed, reasons = verdict(
        [{**by_name.get(a.path, {}), "path": a.path} for a in artifacts],
        reference["accuracy"],
        budgets,
    )
    report = {
        "schema_version": SCHEMA_VERSION,
        "passed": passed,
        "reasons": reasons,
        "target": target,
        "model": model,
        "data": data,
        "recipe": recipe,
        "cpu": check.get("cpu", {}),
        "runtimes": check.get("runtimes", {}),
        "reference": reference,
        "artifacts": rows,
        "parity": parity([by_name[a.path] for a in artifacts if a.path in by_name]),
    }
    report.update(extra or {})
    return report


def write_report(report: dict, path: Path) -> None:
    path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")


def _fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def print_table(report: dict, console: Console) -> None:
    ref = report["reference"]
    table = Table(
        title=f"edgepack — {report['model']['spec']} on {report['target']['name']} "
        f"(reference accuracy {ref['accuracy']:.2f} %)"
    )
    # Under QEMU the deterministic figure is the instruction count; wall time is emulated.
    counted = any("instructions_per_inference" in a for a in report["artifacts"])
    emulated = any(a.get("emulated") for a in report["artifacts"])
    lat = "emu ms" if emulated else "ms"
    cols = [
        "artifact",
        "runtime",
        "bytes",
        "gzip",
        "acc %",
        "drop",
        "agree",
        "max|Δ|",
        f"p50 {lat}",
        f"p90 {lat}",
        *(["Minsn/inf"] if counted else []),
        "RSS MB",
        "model MB",
        "budgets",
    ]
    for col in cols:
        table.add_column(
            col, justify="left" if col in ("artifact", "runtime", "budgets") else "right"
        )
    for a in report["artifacts"]:
        if a.get("status") != "ok":
            table.add_row(
                a["path"],
                a.get("runtime", "-"),
                _fmt(a.get("bytes"), ","),
                *[""] * (len(cols) - 4),
                f"{a.get('status')}: {a.get('reason', '')}",
            )
            continue
        failed = [n for n, b in a["budgets"].items() if not b["ok"]]
        insn = a.get("instructions_per_inference")
        table.add_row(
            a["path"],
            a["runtime"],
            f"{a['bytes']:,}",
            f"{a['gzip_bytes']:,}",
            f"{a['accuracy']:.2f}",
            f"{a['accuracy_drop']:+.2f}",
            f"{a['agreement']:.4f}",
            f"{a['max_abs_diff']:.2e}",
            f"{a['latency_ms']['p50']:.3f}",
            f"{a['latency_ms']['p90']:.3f}",
            *([_fmt(None if insn is None else insn / 1e6, ".3f")] if counted else []),
            _fmt(a.get("peak_rss_mb"), ".0f"),
            _fmt(a.get("model_rss_mb"), ".1f"),
            "FAIL " + ", ".join(failed) if failed else "ok",
        )
    console.print(table)
    same_kind = [
        p for p in report.get("parity", []) if p["a"].split(".")[1] == p["b"].split(".")[1]
    ]  # model.<precision>.*
    for p in same_kind:
        console.print(f"parity: {p['a']} vs {p['b']}: {p['agreement']:.2%} same top-1")
    if emulated:
        console.print(
            "latency is emulated wall time (not a measurement of the device); "
            "Minsn/inf: guest instructions per inference (repeatable exactly)"
        )
    if report["passed"]:
        console.print("[bold green]PASSED[/]: every artifact holds the target's budgets.")
    else:
        console.print("[bold red]FAILED[/]: " + "; ".join(report["reasons"]))
