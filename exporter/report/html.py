"""report.html: the report.json of a run (or of a check) as one page a person reads.

Top to bottom: the verdict per budget in words, the artifacts table, accuracy against size and
latency with the budgets drawn in, per-layer sparsity, int8 sensitivity and attempts, where it
ran (CPU features that steered choices) and the resolved recipe. Every section tolerates its
data being absent: a check report has no compression, an ONNX input was not pruned, a recipe
without int8 has no quantization, a skipped artifact has no measurements.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from exporter.common.atomic import atomic_write_text
from exporter.report.page import (
    BUDGET_COLUMN,
    VERDICT_WORDS,
    Cell,
    artifact_verdict,
    budget_words,
    cell,
    chips,
    esc,
    failed_budgets,
    figure,
    fmt,
    fmt_acc,
    fmt_ms,
    kv_list,
    page,
    report_verdict,
    table,
)
from exporter.report.plots import Line, Point, scatter_svg, sparsity_svg


def write_html(report: dict, path: str | os.PathLike) -> Path:
    """Render ``report`` and write it to ``path`` atomically (never a half-written page)."""
    return atomic_write_text(path, render_html(report))


def render_html(report: dict) -> str:
    """The whole page; the same report always gives the same bytes."""
    model = report.get("model", {}).get("spec", "?")
    target = report.get("target", {}).get("name", "?")
    body = [
        _header(report),
        _verdict(report),
        "<h2>Artifacts</h2>",
        artifacts_table([(None, report)]),
        "<h2>Accuracy against size and latency</h2>",
        scatter_section([(None, report)]),
        "<h2>Compression</h2>",
        _compression(report),
        "<h2>int8 quantization</h2>",
        _quantization(report),
        "<h2>Where it ran</h2>",
        _machine(report),
        "<h2>Recipe</h2>",
        _recipe(report),
    ]
    return page(f"edgepack — {model} on {target}", body)


# --- header and verdict ---------------------------------------------------------------------


def _header(report: dict) -> str:
    model, target = report.get("model", {}), report.get("target", {})
    data, ref = report.get("data", {}), report.get("reference", {})
    where = str(target.get("device") or "?") + (
        f" ({target['host']})" if target.get("host") else ""
    )
    lines = [
        f"target <b>{esc(target.get('name'))}</b> on {esc(where)}: "
        f"{esc(target.get('description', ''))}"
    ]
    if ref:
        lines.append(
            f"original model: {fmt(ref.get('accuracy'), '.2f')} % top-1 on "
            f"{esc(ref.get('samples'))} eval images, {fmt(ref.get('params'), ',')} "
            f"parameters, {fmt(ref.get('macs'), ',')} MACs per image"
        )
    if data.get("eval_note"):
        lines.append(f"eval data: {esc(data['eval_note'])}")
    norm = data.get("normalization")
    if norm:
        values = (
            f"mean {', '.join(f'{v:.4g}' for v in norm['mean'])}, "
            f"std {', '.join(f'{v:.4g}' for v in norm['std'])}"
        )
        # exporter/inputs/data.py channel_stats names a guess "statistics of <data>".
        guessed = str(norm.get("source", "")).startswith("statistics of ")
        lines.append(
            (
                '<b class="tag bad">WARNING</b> input normalization guessed: '
                if guessed
                else "input normalization: "
            )
            + f"{esc(values)} ({esc(norm.get('source'))})"
            + (" — if the model was trained with another, pass --mean/--std" if guessed else "")
        )
    if report.get("checked_dir"):
        lines.append(
            f"a re-check of {esc(report['checked_dir'])}: compression and "
            "quantization are in that directory's report.html"
        )
    lines.append(
        f"edgepack {esc(report.get('edgepack_version', '?'))}, "
        f"report schema {esc(report.get('schema_version', '?'))}"
    )
    return (
        f"<h1>{esc(model.get('spec', '?'))} on {esc(target.get('name', '?'))}</h1>"
        f'<p class="sub">{"<br>".join(lines)}</p>'
    )


def _fmt_budget_value(name: str, value: object) -> str:
    spec = {"max_accuracy_drop": "+.2f", "min_agreement": ".4f"}.get(name)
    if name in ("max_bytes", "max_arena_bytes", "max_flash_bytes"):
        spec = ",.0f"
    if name == "max_latency_p90_ms":
        return f"{fmt_ms(value)} ms"
    text = fmt(value, spec or "g")
    return f"{text} points" if name == "max_accuracy_drop" else text


def budget_lines(report: dict) -> list[tuple[str, str]]:
    """(css class, html) per budget of the recipe and per artifact that was not validated."""
    arts = report.get("artifacts", [])
    validated = [a for a in arts if a.get("status") == "ok"]
    out = []
    for name, limit in (report.get("recipe", {}).get("budgets") or {}).items():
        words = esc(budget_words(name, limit))
        if limit is None:
            out.append(("na", f'<span class="tag na">NOT SET</span> {esc(name)}'))
            continue
        judged = [(a, a["budgets"][name]) for a in validated if name in a.get("budgets", {})]
        if not judged:
            out.append(
                ("na", f'<span class="tag na">UNCHECKED</span> {words}: no artifact was validated')
            )
            continue
        failed = [(a, b) for a, b in judged if not b.get("ok")]
        if failed:
            who = "; ".join(
                f"{esc(a['path'])} has {esc(_fmt_budget_value(name, b['value']))}"
                for a, b in failed
            )
            out.append(("bad", f'<span class="tag bad">FAILED</span> {words}: {who}'))
            continue
        # The artifact nearest its limit says how much margin the budget has.
        pick = min if name.startswith("min_") else max
        closest, b = pick(judged, key=lambda ab: ab[1]["value"])
        out.append(
            (
                "ok",
                f'<span class="tag ok">PASSED</span> {words}: held by all '
                f"{len(judged)} validated artifact(s); closest is "
                f"{esc(closest['path'])} at "
                f"{esc(_fmt_budget_value(name, b['value']))}",
            )
        )
    for a in arts:
        if a.get("status") == "skipped":
            out.append(
                (
                    "na",
                    f'<span class="tag na">SKIPPED</span> {esc(a.get("path"))}: '
                    f"{esc(a.get('reason') or '')}",
                )
            )
        elif a.get("status") != "ok":
            out.append(
                (
                    "bad",
                    f'<span class="tag bad">ERROR</span> {esc(a.get("path"))}: '
                    f"{esc(a.get('reason') or 'not checked')}",
                )
            )
    return out


_SUMMARY = {
    "passed": ("pass", "every validated artifact holds every budget of the recipe"),
    "failed": ("fail", "at least one budget does not hold, or an artifact could not be validated"),
    "not_meaningful": (
        "moot",
        "no budget failed, but these figures cannot mean anything (see the reasons)",
    ),
}


def _verdict(report: dict) -> str:
    state = report_verdict(report)
    css, summary = _SUMMARY[state]
    items = "".join(f"<li>{markup}</li>" for _, markup in budget_lines(report))
    reasons = report.get("reasons") or []
    why = (
        ("<div><b>Reasons</b><ul>" + "".join(f"<li>{esc(r)}</li>" for r in reasons) + "</ul></div>")
        if reasons
        else ""
    )
    notes = report.get("notes") or []
    noted = (
        ("<div><b>Notes</b><ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul></div>")
        if notes
        else ""
    )
    return (
        f'<div class="verdict {css}" id="verdict">'
        f'<span class="word">{VERDICT_WORDS[state]}</span> — {esc(summary)}'
        f"<ul>{items}</ul>{why}{noted}</div>"
    )


# --- artifacts table and scatter plots (shared with `edgepack compare`) -----------------------


def is_emulated(artifact: dict) -> bool:
    return bool(artifact.get("emulated") or (artifact.get("latency_ms") or {}).get("emulated"))


def artifacts_table(entries: Sequence[tuple[str | None, dict]]) -> str:
    """One row per artifact of each (run label, report); the label column only when comparing."""
    comparing = any(label is not None for label, _ in entries)
    arts = [a for _, r in entries for a in r.get("artifacts", [])]
    counted = any(a.get("instructions_per_inference") is not None for a in arts)
    # TFLM targets: the board's RAM (tensor arena) and flash (model bytes).
    mcu = any(a.get("arena_bytes") is not None for a in arts)
    emulated = any(is_emulated(a) for a in arts)
    headers = [
        *(["run: model @ target"] if comparing else []),
        "artifact",
        "format",
        "precision",
        "storage",
        "runtime",
        "bytes",
        "gzip bytes",
        "acc %",
        "drop pts",
        "agree",
        "p50 ms",
        "p90 ms",
        *(["M instr / image"] if counted else []),
        *(["arena B", "flash B"] if mcu else []),
        "RSS MB",
        "model MB",
        "budgets",
    ]
    first_num = headers.index("bytes")
    nums = range(first_num, len(headers) - 1)
    rows = []
    for label, report in entries:
        # One narrow column for the run, so the measurements still fit a laptop screen.
        lead = (
            [
                Cell(
                    f'<b>{esc(label)}</b><br><span class="note">'
                    f"{esc(_short_model(report))} @ {esc(report['target'].get('name'))}"
                    "</span>"
                )
            ]
            if comparing
            else []
        )
        for a in report.get("artifacts", []):
            rows.append(_artifact_row(a, lead, counted, mcu))
    note = (
        (
            '<p class="note"><span class="flag">emu</span>: emulated wall time under QEMU, '
            "not a measurement of the device; the instruction count is the deterministic "
            "figure.</p>"
        )
        if emulated
        else ""
    )
    if not rows:
        return '<p class="note">This report lists no artifact.</p>'
    return table(headers, rows, nums, css="art") + note


def _short_model(report: dict) -> str:
    spec = str(report.get("model", {}).get("spec", "?"))
    # A path-like spec (file.py:Factory, /x/model.onnx) is named by its last component.
    return spec.replace("\\", "/").rsplit("/", 1)[-1]


def _artifact_row(
    a: dict, lead: list[Cell], counted: bool, mcu: bool = False
) -> tuple[list[Cell], str]:
    runtime = " ".join(str(a[k]) for k in ("runtime", "runtime_version", "delegate") if a.get(k))
    head = [
        *lead,
        cell(a.get("path")),
        cell(a.get("format")),
        cell(a.get("precision")),
        cell(a.get("storage")),
        cell(runtime or "–"),
        cell(fmt(a.get("bytes"), ","), num=True),
    ]
    word, cls = artifact_verdict(a)
    if a.get("status") != "ok":
        # No measurements: the reason spans the measurement columns and the budgets column.
        reason = f'<span class="tag {cls}">{esc(word)}</span> {esc(a.get("reason") or "")}'
        span = 8 + counted + 2 * mcu
        return [*head, Cell(reason, span=span)], "bad" if cls == "bad" else "muted"
    bad_cols = {BUDGET_COLUMN.get(n) for n in failed_budgets(a)}
    lat = a.get("latency_ms") or {}
    flag = '<sup class="flag" title="emulated">emu</sup>' if is_emulated(a) else ""
    cells = [
        *head[:-1],
        cell(fmt(a.get("bytes"), ","), num=True, bad="bytes" in bad_cols),
        cell(fmt(a.get("gzip_bytes"), ","), num=True),
        cell(fmt_acc(a.get("accuracy")), num=True),
        cell(fmt(a.get("accuracy_drop"), "+.2f"), num=True, bad="drop" in bad_cols),
        cell(fmt(a.get("agreement"), ".4f"), num=True, bad="agreement" in bad_cols),
        Cell(esc(fmt_ms(lat.get("p50"))) + flag, num=True),
        Cell(esc(fmt_ms(lat.get("p90"))) + flag, num=True, bad="p90" in bad_cols),
        *(
            [cell(fmt(_mega(a.get("instructions_per_inference")), ",.3f"), num=True)]
            if counted
            else []
        ),
        *(
            [
                cell(fmt(a.get("arena_bytes"), ","), num=True, bad="arena" in bad_cols),
                cell(fmt(a.get("flash_bytes"), ","), num=True, bad="bytes" in bad_cols),
            ]
            if mcu
            else []
        ),
        cell(fmt(a.get("peak_rss_mb"), ".0f"), num=True),
        cell(fmt(a.get("model_rss_mb"), ".1f"), num=True),
        Cell(f'<span class="tag {cls}">{esc(word)}</span>'),
    ]
    return cells, "bad" if cls == "bad" else ""


def _mega(value: object) -> float | None:
    return None if value is None else float(value) / 1e6


def _points(entries: Sequence[tuple[str | None, dict]]) -> list[Point]:
    points = []
    for label, report in entries:
        for a in report.get("artifacts", []):
            lat = (a.get("latency_ms") or {}).get("p90")
            if a.get("status") != "ok" or None in (a.get("bytes"), a.get("accuracy"), lat):
                continue
            kind = f"{a.get('format')} {a.get('precision')} {a.get('storage')}"
            # One report: a colour per artifact. Several: a colour per run, a marker per kind.
            points.append(
                Point(
                    label=f"{label}: {a['path']}" if label else a["path"],
                    colour_key=label or a["path"],
                    marker_key=kind,
                    size=float(a["bytes"]),
                    latency=float(lat),
                    accuracy=float(a["accuracy"]),
                )
            )
    return points


def _budget_lines(
    entries: Sequence[tuple[str | None, dict]],
    key: str,
    unit: str,
) -> list[Line]:
    """One line per distinct limit over the reports (reports that share a budget share it)."""
    seen: dict[float, list[str]] = {}
    for label, report in entries:
        budgets = report.get("recipe", {}).get("budgets") or {}
        if key == "accuracy":
            ref = (report.get("reference") or {}).get("accuracy")
            drop = budgets.get("max_accuracy_drop")
            if ref is None or drop is None:
                continue
            value = round(float(ref) - float(drop), 6)
        elif budgets.get(key) is not None:
            value = float(budgets[key])
        else:
            continue
        seen.setdefault(value, []).append(label or "")
    many = len(seen) > 1
    lines = []
    for value, labels in seen.items():
        shown = (
            f"{fmt_acc(value)} %"
            if key == "accuracy"
            else f"{value:,.0f} {unit}"
            if key == "max_bytes"
            else f"{value:g} {unit}"
        )
        who = f" ({', '.join(labels)})" if many and any(labels) else ""
        lines.append(Line(value, f"budget {'≥' if key == 'accuracy' else '≤'} {shown}{who}"))
    return lines


def scatter_section(entries: Sequence[tuple[str | None, dict]]) -> str:
    points = _points(entries)
    if not points:
        return '<p class="note">No artifact was validated, so there is nothing to plot.</p>'
    acc = _budget_lines(entries, "accuracy", "%")
    emulated = any(
        is_emulated(a)
        for _, r in entries
        for a in r.get("artifacts", [])
        if a.get("status") == "ok"
    )
    size = scatter_svg(
        points,
        x="size",
        accuracy_lines=acc,
        name="plot-size",
        x_lines=_budget_lines(entries, "max_bytes", "B"),
    )
    latency = scatter_svg(
        points,
        x="latency",
        accuracy_lines=acc,
        name="plot-latency",
        x_lines=_budget_lines(entries, "max_latency_p90_ms", "ms"),
        emulated=emulated,
    )
    floor = (
        "dashed line: the accuracy floor (reference accuracy − max_accuracy_drop)"
        if acc
        else "no accuracy budget is set"
    )
    return (
        f'<div class="plots">'
        f"{figure(size, f'Top-1 accuracy against file size; {floor}; dotted: max_bytes.')}"
        f"{figure(latency, f'Top-1 accuracy against p90 latency; {floor}; dotted: max_latency_p90_ms.' + (' Latency is emulated.' if emulated else ''))}"
        "</div>"
    )


# --- compression and quantization ----------------------------------------------------------


def _compression(report: dict) -> str:
    comp = report.get("compression")
    if not comp:
        return (
            '<p class="note">Not in this report (a re-check validates existing '
            "artifacts; the run's report has the compression).</p>"
        )
    facts = [
        (k, comp[k])
        for k in (
            "method",
            "target_sparsity",
            "pruned_fraction",
            "scope",
            "threshold",
            "finetune_epochs",
            "params",
            "macs",
            "torch_accuracy",
        )
        if comp.get(k) is not None
    ]
    if comp.get("finetune_loss"):
        facts.append(("finetune_loss", ", ".join(f"{x:.3f}" for x in comp["finetune_loss"])))
    if (report.get("export") or {}).get("onnx_vs_torch_max_abs_diff") is not None:
        facts.append(
            ("onnx_vs_torch_max_abs_diff", f"{report['export']['onnx_vs_torch_max_abs_diff']:.2e}")
        )
    parts = [kv_list((k, _short(v)) for k, v in facts)]
    layers = comp.get("layers") or []
    if layers:
        svg = sparsity_svg(layers, comp.get("target_sparsity"), name="plot-sparsity")
        parts.append(
            f'<div class="half">{figure(svg, "Zero weights per prunable layer (graph order); the target applies to the model as a whole, layers the recipe excludes stay dense.")}</div>'
        )
    else:
        parts.append('<p class="note">No per-layer sparsity: nothing was pruned.</p>')
    return "".join(parts)


def _quantization(report: dict) -> str:
    q = report.get("quantization")
    if not q:
        precisions = report.get("recipe", {}).get("export", {}).get("precisions")
        why = (
            f"the recipe's precisions are {', '.join(map(str, precisions))}"
            if precisions
            else "not in this report"
        )
        return f'<p class="note">int8 quantization did not run: {esc(why)}.</p>'
    facts = [
        (k, q[k])
        for k in (
            "method",
            "per_channel",
            "reduce_range",
            "reduce_range_reason",
            "calibration",
            "float_layers",
            "fp32_tuning_accuracy",
            "within_budget",
            "seconds",
        )
        if k in q
    ]
    parts = [kv_list((k, _short(v)) for k, v in facts)]
    sens = q.get("sensitivity") or []
    first = q.get("first_divergence")
    if sens:
        parts.append("<h3>Per-layer sensitivity (int8 output against float)</h3>")
        parts.append(
            '<p class="note">'
            + (
                f"The int8 model starts to diverge at <b>{esc(first)}</b> (highlighted): the first "
                "layer whose SNR falls below the threshold; errors accumulate from there."
                if first
                else "No layer diverges: every layer's int8 output stays close to float."
            )
            + "</p>"
        )
        rows = [
            (
                [
                    cell(i + 1, num=True),
                    cell(r.get("node")),
                    cell(r.get("op")),
                    cell(r.get("tensor")),
                    cell(fmt(r.get("cosine"), ".6f"), num=True),
                    cell(fmt(r.get("snr_db"), ".1f"), num=True),
                ],
                "mark" if first is not None and r.get("node") == first else "",
            )
            for i, r in enumerate(sens)
        ]
        parts.append(table(["#", "node", "op", "tensor", "cosine", "SNR dB"], rows, (0, 4, 5)))
    attempts = q.get("attempts") or []
    if attempts:
        parts.append("<h3>Attempts (in order; the chosen one is marked)</h3>")
        rows = [
            (
                [
                    cell(i + 1, num=True),
                    cell(
                        t.get("method", "")
                        + (f" + QAT {t['qat_epochs']} epochs" if t.get("qat_epochs") else "")
                    ),
                    cell(", ".join(t.get("float_layers") or []) or "none"),
                    cell(fmt(t.get("tuning_accuracy"), ".2f"), num=True),
                    cell(fmt(t.get("drop"), "+.2f"), num=True),
                    cell("chosen" if t.get("chosen") else ""),
                ],
                "mark" if t.get("chosen") else "",
            )
            for i, t in enumerate(attempts)
        ]
        parts.append(
            table(
                [
                    "#",
                    "calibration",
                    "layers kept in float",
                    "tuning accuracy %",
                    "drop (points)",
                    "",
                ],
                rows,
                (0, 3, 4),
            )
        )
    return "".join(parts)


# --- machine and recipe --------------------------------------------------------------------


def _machine(report: dict) -> str:
    cpu = report.get("cpu") or {}
    if not cpu and not report.get("runtimes"):
        return '<p class="note">Not recorded in this report.</p>'
    facts = [
        (k, cpu[k])
        for k in ("machine", "model", "cpu_part", "cores", "emulated")
        if cpu.get(k) is not None
    ]
    parts = [kv_list(facts)]
    if cpu.get("features"):
        parts.append("<p>ISA features that steer kernels: " + chips(cpu["features"]) + "</p>")
    reason = (report.get("quantization") or {}).get("reduce_range_reason")
    if reason:
        parts.append(f"<p>int8 weight range: {esc(reason)}</p>")
    if report.get("runtimes"):
        parts.append(
            "<p>runtimes: " + chips(f"{k} {v}" for k, v in report["runtimes"].items()) + "</p>"
        )
    return "".join(parts)


def flatten(values: dict, prefix: str = "") -> Iterable[tuple[str, str]]:
    """section.key = value pairs; values as JSON (null, true, lists) like `edgepack targets`."""
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from flatten(value, f"{name}.")
        else:
            yield name, value if isinstance(value, str) else json.dumps(value)


def _recipe(report: dict) -> str:
    recipe = report.get("recipe")
    if not recipe:
        return '<p class="note">Not in this report.</p>'
    return kv_list(flatten(recipe))


def _short(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "none"
    return str(value)
