"""report.json (exporter.report.schema) built from the exporter's artifacts and runtime_check's
measurements, and the console table made from it."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from exporter.artifacts import Artifact
from exporter.common.typed_json import from_json
from exporter.report.schema import (
    SCHEMA_VERSION,
    ArtifactRow,
    Compression,
    CpuInfo,
    DataInfo,
    ExportCheck,
    ModelInfo,
    Parity,
    Quantization,
    Reference,
    Report,
    Target,
)
from runtime_check.verdict import judge_artifact, parity, verdict

__all__ = ["SCHEMA_VERSION", "build_report", "print_table"]

# What runtime_check measures that a row keeps; the rest of its result (predictions, its own
# idea of the format) is not part of the report.
_MEASURED = (
    "status",
    "reason",
    "bytes",
    "gzip_bytes",
    "accuracy",
    "agreement",
    "max_abs_diff",
    "latency_ms",
    "instructions_per_inference",
    "emulated",
    "threads",
    "runtime",
    "runtime_version",
    "delegate",
    "peak_rss_mb",
    "model_rss_mb",
    "input",
    "samples",
)


def _row(art: Artifact, measured: dict, reference_accuracy: float, budgets: dict) -> ArtifactRow:
    fields = {k: measured[k] for k in _MEASURED if k in measured}
    if measured.get("status") == "ok":
        fields["accuracy_drop"] = reference_accuracy - measured["accuracy"]
    fields["budgets"] = judge_artifact(measured, reference_accuracy, budgets)
    row = from_json(
        ArtifactRow,
        {**fields, "path": art.path, "format": art.format, "precision": art.precision,
         "storage": art.storage},
        f"runtime_check result for {art.path}",
    )  # fmt: skip
    # The exporter's facts go into fields of their own: a measurement never meets them.
    row.tflite, row.int8, row.tensors = art.tflite, art.int8, art.tensors
    return row


def build_report(
    *,
    target: Target,
    model: ModelInfo,
    data: DataInfo,
    recipe: dict,
    reference: Reference,
    artifacts: list[Artifact],
    check: dict,
    edgepack_version: str,
    compression: Compression | None = None,
    export: ExportCheck | None = None,
    quantization: Quantization | None = None,
    checked_dir: str | None = None,
) -> Report:
    """Merge what the exporter wrote with what runtime_check measured, and judge it."""
    budgets = recipe["budgets"]
    by_name = {r["path"]: r for r in check["results"]}
    not_checked = {"status": "error", "reason": "not checked"}
    rows = [
        _row(a, by_name.get(a.path, not_checked), reference.accuracy, budgets) for a in artifacts
    ]
    passed, reasons = verdict(
        [{**by_name.get(a.path, {}), "path": a.path} for a in artifacts],
        reference.accuracy,
        budgets,
    )
    cpu = check.get("cpu")
    return Report(
        schema_version=SCHEMA_VERSION,
        passed=passed,
        reasons=reasons,
        target=target,
        model=model,
        data=data,
        recipe=recipe,
        cpu=from_json(CpuInfo, cpu, "runtime_check cpu") if cpu else None,
        runtimes=dict(check.get("runtimes", {})),
        reference=reference,
        artifacts=rows,
        parity=[
            Parity(**p) for p in parity([by_name[a.path] for a in artifacts if a.path in by_name])
        ],
        compression=compression,
        export=export,
        quantization=quantization,
        edgepack_version=edgepack_version,
        checked_dir=checked_dir,
    )


def _fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def print_table(report: dict, console: Console) -> None:
    ref = report["reference"]
    table = Table(
        title=f"edgepack — {report['model']['spec']} on {report['target']['name']} "
        f"(reference accuracy {ref['accuracy']:.2f} %)"
    )
    # Under QEMU the deterministic figure is the instruction count; wall time is emulated.
    counted = any(a.get("instructions_per_inference") is not None for a in report["artifacts"])
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
                a.get("runtime") or "-",
                _fmt(a.get("bytes"), ","),
                *[""] * (len(cols) - 4),
                f"{a.get('status')}: {a.get('reason') or ''}",
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
