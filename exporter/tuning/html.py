"""tune.html: the study on one page, in the report's style (exporter.report.page)."""

from __future__ import annotations

from pathlib import Path

from exporter.common.atomic import atomic_write_text
from exporter.report.page import cell, esc, figure, kv_list, page, table
from exporter.report.plots import BUDGET_COLOUR, PALETTE, Line, _figure, _svg, place_lines
from exporter.tuning.progress import describe
from exporter.tuning.schema import TuneReport

_AXIS = {"size": "bytes", "latency": "p50 latency, ms", "instructions": "instructions / inference"}
# The figure each axis reads from a trial's tuning figures.
_X = {
    "size": lambda f: f.bytes,
    "latency": lambda f: f.latency_p50_ms,
    "instructions": lambda f: f.instructions,
}


def _scatter(report: TuneReport, axis: str) -> str:
    """Accuracy vs ``axis`` for every complete trial: infeasible grey, feasible blue, the front
    ringed, the chosen trial starred, the budgets drawn."""
    fig = _figure(3.6)
    ax = fig.add_subplot()
    front = {m.trial for m in report.front}
    groups = {"infeasible": [], "feasible": [], "front": []}
    chosen = None
    for t in report.trials:
        if t.tuning is None or _X[axis](t.tuning) is None:
            continue
        xy = (_X[axis](t.tuning), t.tuning.accuracy)
        key = "front" if t.number in front else ("feasible" if t.feasible else "infeasible")
        groups[key].append(xy)
        if t.number == report.chosen:
            chosen = xy
    style = {
        "infeasible": {"color": "#bbbbbb", "marker": "x"},
        "feasible": {"color": PALETTE[0], "marker": "o"},
        "front": {"color": PALETTE[1], "marker": "D"},
    }
    for key, pts in groups.items():
        if pts:
            ax.scatter(*zip(*pts, strict=True), label=f"{key} ({len(pts)})", s=22, **style[key])
    if groups["front"]:
        ax.plot(*zip(*sorted(groups["front"]), strict=True), color=PALETTE[1], lw=0.8, alpha=0.6)
    if chosen:
        ax.scatter(*chosen, marker="*", s=220, facecolor="none", edgecolor="black",
                   label="chosen (best.toml)")  # fmt: skip
    ref = report.reference_tuning_accuracy
    drop = report.budgets.get("max_accuracy_drop")
    if ref is not None and drop is not None:
        ax.axhline(ref - drop, color=BUDGET_COLOUR, ls="--", lw=1, label="accuracy budget")
    limit = {"size": "max_bytes", "latency": "max_latency_p90_ms"}.get(axis)
    xs = [x for pts in groups.values() for x, _ in pts]
    lines = [Line(report.budgets[limit], limit)] if limit and limit in report.budgets else []
    # A budget decades beyond the data (50 MB for a 30 kB model) is named, not drawn.
    xlim, shown, off = place_lines(xs, lines)
    for line in shown:
        ax.axvline(line.value, color=BUDGET_COLOUR, ls=":", lw=1, label=line.label)
    ax.set_xlim(*xlim)
    if off:
        ax.set_title(", ".join(f"{ln.label} {ln.value:g}: off the scale" for ln in off),
                     fontsize=7, loc="right")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel(_AXIS[axis])
    ax.set_ylabel("top-1 on the tuning split, %")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return _svg(fig, f"tune-{axis}")


def _front_table(report: TuneReport) -> str:
    obj = report.objective
    rows = []
    for m in report.front:
        ev = m.eval
        ratio = (
            f"{m.fp32_tflite_bytes / ev.bytes:.1f}×"
            if ev and ev.bytes and m.fp32_tflite_bytes
            else "–"
        )
        cells = [
            cell(f"{m.trial}{' (chosen)' if m.trial == report.chosen else ''}"),
            cell(m.tuning.artifact),
            cell(describe(m.tuning.objective, obj), num=True),
            cell(f"{m.tuning.accuracy:.2f}", num=True),
            cell(describe(ev.objective if ev else None, obj), num=True),
            cell(f"{ev.accuracy:.2f}" if ev and ev.accuracy is not None else "–", num=True),
            cell(
                f"{ev.accuracy_drop:+.2f}" if ev and ev.accuracy_drop is not None else "–",
                num=True,
                bad=not m.eval_passed,
            ),
            cell(ratio, num=True),
            cell(m.recipe),
        ]
        rows.append((cells, "chosen" if m.trial == report.chosen else ""))
    headers = ["trial", "artifact", "tuning", "tuning acc %", "eval", "eval acc %", "eval drop",
               "fp32 / this", "recipe"]  # fmt: skip
    return table(headers, rows, num_cols=(2, 3, 4, 5, 6, 7))


def _trials_table(report: TuneReport) -> str:
    rows = []
    for t in report.trials:
        f = t.tuning
        cells = [
            cell(t.number),
            cell(f"{t.state}: {t.fail_reason[:120]}" if t.fail_reason else t.state),
            cell("yes" if t.feasible else ("no" if t.feasible is False else "–")),
            cell(describe(f.objective if f else None, report.objective), num=True),
            cell(f"{f.accuracy:.2f}" if f and f.accuracy is not None else "–", num=True),
            cell(t.host or "–"),
            cell(f"{t.wall_s:.1f}" if t.wall_s is not None else "–", num=True),
            cell(" ".join(t.overrides)),
        ]
        rows.append((cells, ""))
    headers = ["trial", "state", "feasible", "tuning", "acc %", "host", "s", "--set"]
    return table(headers, rows, num_cols=(3, 4, 6))


def render_tune_html(report: TuneReport) -> str:
    body = [
        f"<h1>edgepack tune: {esc(report.model)} on {esc(report.target)}</h1>",
        kv_list(
            [
                ("objective", f"maximize accuracy, minimize {report.objective}"),
                ("study", f"{report.study} ({report.storage})"),
                ("sampler", report.sampler),
                ("trials", len(report.trials)),
                ("budgets", ", ".join(f"{k} {v}" for k, v in report.budgets.items())),
                ("chosen", report.chosen_note),
                ("wall time", f"{report.wall_s:.0f} s"),
                *([("search stopped", report.search_stop)] if report.search_stop else []),
            ]
        ),
        f"<p>Honest selection: {esc(report.tuning_split)}. The eval columns below are those "
        "figures; the plots show the search's view (tuning split).</p>",
    ]
    axes = [report.objective] + (["size"] if report.objective != "size" else [])
    for axis in axes:
        body.append(figure(_scatter(report, axis), f"top-1 vs {_AXIS[axis]}, every trial"))
    body += ["<h2>Pareto front</h2>", _front_table(report), "<h2>Trials</h2>",
             _trials_table(report)]  # fmt: skip
    return page(f"edgepack tune {report.study}", body)


def write_tune_html(report: TuneReport, path: Path) -> None:
    atomic_write_text(path, render_tune_html(report))
