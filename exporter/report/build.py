"""report.json (exporter.report.schema) built from the exporter's artifacts and runtime_check's
measurements, and the console table made from it."""

from __future__ import annotations

import math

import numpy as np
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from exporter.artifacts import Artifact
from exporter.common.typed_json import from_json
from exporter.report.page import budget_words, fmt_ms
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

__all__ = ["SCHEMA_VERSION", "build_report", "print_table", "reference_for"]

# An accuracy budget finer than this many eval images is noted: one unlucky image decides it.
MIN_BUDGET_IMAGES = 3
# A reference accuracy within this many standard errors of chance is not a baseline.
CHANCE_SIGMAS = 3.0

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
    "ops_outside_delegate",
    "emulated",
    "threads",
    "runtime",
    "runtime_version",
    "delegate",
    "peak_rss_mb",
    "model_rss_mb",
    "arena_bytes",
    "arena_breakdown",
    "flash_bytes",
    "input",
    "samples",
)


def reference_for(
    accuracy: float,
    labels: np.ndarray,
    *,
    params: int | None = None,
    macs: int | None = None,
    note: str | None = None,
) -> Reference:
    """The reference section for an eval set: the accuracy and what it can resolve."""
    labels = np.asarray(labels)
    n = len(labels)
    _, counts = np.unique(labels, return_counts=True)
    return Reference(
        accuracy=float(accuracy),
        params=params,
        macs=macs,
        samples=int(n),
        points_per_image=100.0 / n,
        eval_classes=len(counts),
        chance_accuracy=float(counts.max() * 100.0 / n),
        note=note,
    )


def not_meaningful(model: ModelInfo, reference: Reference) -> list[str]:
    """Why no verdict on these figures can mean anything (each line starts `not meaningful:`)."""
    why = []
    if model.random_weights:
        why.append(
            f"{model.spec} has no --weights: its random initial weights were validated "
            "(train it first with `edgepack train`, then pass --weights)"
        )
    if reference.eval_classes == 1:
        why.append(
            "every eval image is of one class: a model answering that class always scores 100 %"
        )
    else:
        # The binomial standard error of an accuracy at chance over these many images.
        p = reference.chance_accuracy / 100.0
        sigma = 100.0 * math.sqrt(p * (1.0 - p) / reference.samples)
        if reference.accuracy <= reference.chance_accuracy + CHANCE_SIGMAS * sigma:
            why.append(
                f"the original model scores {reference.accuracy:.2f} % on the eval images, "
                f"chance level (always answering the most frequent label scores "
                f"{reference.chance_accuracy:.2f} %): check the model, its weights, the data "
                "and its labels"
            )
    return [f"not meaningful: {w}" for w in why]


def resolution_notes(reference: Reference, budgets: dict) -> list[str]:
    """A note when the accuracy budget is finer than a few eval images."""
    limit = budgets.get("max_accuracy_drop")
    ppi = reference.points_per_image
    if limit is None or limit >= MIN_BUDGET_IMAGES * ppi:
        return []
    return [
        f"the eval set has {reference.samples} images, so 1 image = {ppi:.2f} points: "
        f"max_accuracy_drop {limit:g} is {limit / ppi:.1f} images, and one image decides it "
        "(use more eval images: eval.samples, eval.holdout or --eval-data)"
    ]


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
    row.sha256 = art.sha256
    return row


def _result_of(art: Artifact, by_name: dict) -> dict:
    """runtime_check's result for ``art``; a missing one is an error, and the size recorded at
    export stands in for a measured one, so max_bytes is judged either way."""
    res = by_name.get(art.path, {"status": "error", "reason": "not checked"})
    if res.get("bytes") is None and art.bytes is not None:
        res = {**res, "bytes": art.bytes}
    return {**res, "path": art.path}


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
    results = [_result_of(a, by_name) for a in artifacts]
    rows = [
        _row(a, r, reference.accuracy, budgets) for a, r in zip(artifacts, results, strict=True)
    ]
    held, reasons = verdict(results, reference.accuracy, budgets)
    meaningless = not_meaningful(model, reference)
    state = "failed" if not held else "not_meaningful" if meaningless else "passed"
    cpu = check.get("cpu")
    return Report(
        schema_version=SCHEMA_VERSION,
        passed=state == "passed",
        verdict=state,
        reasons=[*meaningless, *reasons],
        notes=resolution_notes(reference, budgets),
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


# The console table fits a 100-column terminal: related figures share a column ("bytes/gzip",
# "acc % drop", "p50/p90"); the runtime, the process's peak RSS, max |Δlogit| and, under QEMU,
# the emulated wall time are in report.html and report.json only.
CONSOLE_WIDTH = 100
# Which figure a failed budget is about, in the table's words.
_BUDGET_SHORT = {
    "max_accuracy_drop": "drop",
    "min_agreement": "agree",
    "max_latency_p90_ms": "p90",
    "max_bytes": "bytes",
    "max_arena_bytes": "arena",
    "max_flash_bytes": "flash",
}


def _budget_value(name: str, value: object) -> str:
    if name == "max_latency_p90_ms":
        return fmt_ms(value)
    spec = {"max_accuracy_drop": "+.2f", "min_agreement": ".4f"}.get(name, "g")
    if name == "max_bytes":
        spec = ","
    elif name in ("max_arena_bytes", "max_flash_bytes"):
        spec = ",.0f"
    return _fmt(value, spec)


def _console_columns(report: dict) -> list[str]:
    arts = report["artifacts"]
    counted = any(a.get("instructions_per_inference") is not None for a in arts)
    # Under QEMU the deterministic figure is the instruction count; wall time is emulated.
    timed = not counted or not all(a.get("emulated") for a in arts if a.get("status") == "ok")
    # A TFLM target's figures are the board's memory: the arena in RAM, the model in flash;
    # nothing is timed and this process's memory says nothing of the board.
    if any(a.get("arena_bytes") is not None for a in arts):
        return ["artifact", "bytes/gzip", "acc % drop", "agree", "arena B", "budgets"]
    return [
        "artifact",
        "bytes/gzip",
        "acc % drop",
        "agree",
        *(["p50/p90 ms"] if timed else []),
        *(["Minsn/inf"] if counted else []),
        "model MB",
        "budgets",
    ]


def _artifact_cells(a: dict, cols: list[str]) -> list[str]:
    failed = [_BUDGET_SHORT.get(n, n) for n, b in (a.get("budgets") or {}).items() if not b["ok"]]
    verdict = ("FAIL " + ", ".join(failed)) if failed else "ok"
    if a.get("status") != "ok":
        word = str(a.get("status") or "error")
        blank = [""] * (len(cols) - 3)
        return [
            a["path"],
            _fmt(a.get("bytes"), ","),
            *blank,
            f"{word} {verdict}" if failed else word,
        ]
    lat, insn = a.get("latency_ms") or {}, a.get("instructions_per_inference")
    emu = "*" if a.get("emulated") else ""
    figures = {
        "bytes/gzip": f"{a['bytes']:,}/{_fmt(a.get('gzip_bytes'), ',')}",
        "acc % drop": f"{a['accuracy']:.2f} {a['accuracy_drop']:+.2f}",
        "agree": f"{a['agreement']:.4f}",
        # 3 significant digits, as report.html prints them.
        "p50/p90 ms": f"{fmt_ms(lat.get('p50'))}/{fmt_ms(lat.get('p90'))}{emu}",
        "Minsn/inf": _fmt(None if insn is None else insn / 1e6, ".3f"),
        "model MB": _fmt(a.get("model_rss_mb"), ".1f"),
        "arena B": _fmt(a.get("arena_bytes"), ","),
    }
    return [a["path"], *(figures[c] for c in cols[1:-1]), verdict]


def artifacts_table(report: dict) -> Table:
    """The artifacts as a rich table that fits CONSOLE_WIDTH columns."""
    ref = report["reference"]
    table = Table(
        title=f"edgepack — {report['model']['spec']} on {report['target']['name']} "
        f"(reference accuracy {ref['accuracy']:.2f} %)",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    cols = _console_columns(report)
    for col in cols:
        # Figures never wrap: a number split over two lines reads as two numbers.
        table.add_column(
            col,
            justify="left" if col in ("artifact", "budgets") else "right",
            no_wrap=col != "budgets",
        )
    for a in report["artifacts"]:
        table.add_row(*_artifact_cells(a, cols))
    return table


def _failed_budget_line(name: str, limit: object, who: list[tuple[str, object]]) -> str:
    named = ", ".join(f"{path} ({_budget_value(name, value)})" for path, value in who)
    return f"{name} ({budget_words(name, limit)}) failed by {named}"


def grouped_reasons(report: dict) -> list[str]:
    """report["reasons"], each said once: a budget that several artifacts fail is one line
    naming them (with their values), and a reason shared by artifacts lists them after it."""
    arts = {a["path"]: a for a in report.get("artifacts", [])}
    groups: dict[tuple, list] = {}
    for reason in report.get("reasons", []):
        path, sep, rest = reason.partition(": ")
        if not (sep and path in arts):
            groups.setdefault(("text", reason), [])
            continue
        budgets = arts[path].get("budgets") or {}
        name = rest.split(" ", 1)[0]
        if name in budgets and not budgets[name]["ok"]:
            key = ("budget", name, budgets[name]["limit"])
            groups.setdefault(key, []).append((path, budgets[name]["value"]))
        else:
            groups.setdefault(("text", rest), []).append((path, None))
    lines = []
    for key, who in groups.items():
        if key[0] == "budget":
            lines.append(_failed_budget_line(key[1], key[2], who))
        else:
            lines.append(key[1] + (": " + ", ".join(p for p, _ in who) if who else ""))
    return lines


def _unexplained(report: dict) -> list[str]:
    """Artifacts that did not run and that no reason names (a skip the recipe asked for)."""
    named = {r.partition(": ")[0] for r in report.get("reasons", [])}
    groups: dict[str, list[str]] = {}
    for a in report["artifacts"]:
        if a.get("status") != "ok" and a["path"] not in named:
            text = f"{a.get('status')}: {a.get('reason') or 'no reason given'}"
            groups.setdefault(text, []).append(a["path"])
    return [f"{text}: {', '.join(paths)}" for text, paths in groups.items()]


def normalization_line(report: dict) -> str | None:
    """Where the input normalization came from; a guess from the data is a warning."""
    norm = (report.get("data") or {}).get("normalization")
    if not norm:
        return None
    values = (
        f"mean {', '.join(f'{v:.4g}' for v in norm['mean'])}, "
        f"std {', '.join(f'{v:.4g}' for v in norm['std'])}"
    )
    if normalization_guessed(norm):
        return (
            f"[yellow]warning[/]: input normalization {values} is the {escape(norm['source'])}; "
            "if the model was trained with another one, pass it (--mean/--std) or every "
            "figure and the package are wrong"
        )
    return f"input normalization: {values} ({escape(norm['source'])})"


def normalization_guessed(norm: dict) -> bool:
    # exporter/inputs/data.py channel_stats names its source "statistics of <data>".
    return str(norm.get("source", "")).startswith("statistics of ")


def print_table(report: dict, console: Console) -> None:
    emulated = any(a.get("emulated") for a in report["artifacts"])
    console.print(artifacts_table(report))
    for line in _unexplained(report):
        console.print(line, markup=False, highlight=False)
    norm = normalization_line(report)
    if norm:
        console.print(norm, highlight=False)
    same_kind = [
        p for p in report.get("parity", []) if p["a"].split(".")[1] == p["b"].split(".")[1]
    ]  # model.<precision>.*
    for p in same_kind:
        console.print(f"parity: {p['a']} vs {p['b']}: {p['agreement']:.2%} same top-1")
    if any(a.get("arena_bytes") is not None for a in report["artifacts"]):
        console.print(
            "TFLM: arena B is the smallest tensor arena the model ran in; flash is the model's "
            "bytes (TFLM's and the application's code not included); no latency: TFLM's "
            "reference kernels on this machine are not the board"
        )
    if emulated:
        console.print(
            "*: emulated wall time, not a measurement of the device (report.html has it); "
            "Minsn/inf: guest instructions per inference (repeatable exactly)"
        )
    for note in report.get("notes", []):
        console.print(f"[yellow]note[/]: {note}")
    state = report.get("verdict", "passed" if report["passed"] else "failed")
    if state == "passed":
        console.print("[bold green]PASSED[/]: every artifact holds the target's budgets.")
    elif state == "not_meaningful":
        why = [r.removeprefix("not meaningful: ") for r in report["reasons"]]
        console.print("[bold yellow]NOT MEANINGFUL[/]: " + "; ".join(why))
    else:
        console.print("[bold red]FAILED[/]:")
        for line in grouped_reasons(report):
            console.print("  " + line, markup=False, highlight=False)
