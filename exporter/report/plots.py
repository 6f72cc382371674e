"""The figures of the HTML reports, drawn with matplotlib and returned as inline SVG text.

The SVG is made to live inside an HTML page: no XML prolog, no fixed size (the page's CSS sizes
it), every ``id`` prefixed per figure (each matplotlib figure names its glyphs and clip paths
the same way, and one page holds several figures), and nothing that varies between two renders
of the same report (``svg.hashsalt``, no date) so the page is byte-for-byte reproducible.
matplotlib is imported on first use: it is slow to import and only report writing needs it.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from exporter.report.page import fmt_acc

# Colour-blind-friendly and distinct in print; cycled when there are more series.
PALETTE = (
    "#4477aa",
    "#ee6677",
    "#228833",
    "#ccbb44",
    "#66ccee",
    "#aa3377",
    "#bbbbbb",
    "#332288",
    "#117733",
    "#882255",
)
MARKERS = ("o", "s", "D", "^", "v", "P", "X", "*", "<", ">")
BUDGET_COLOUR = "#c0392b"
FIG_WIDTH_IN = 6.4
# A budget line at most this many decades beyond the data is drawn (the axis widens to it).
NEAR_DECADES = 1.0
# Markers closer than this on the page (in points) hide each other.
MARKER_PT = 8.0
# DejaVu Sans ships with matplotlib, so the glyphs (embedded as paths) are the same everywhere.
_STYLE = {"font.family": "DejaVu Sans", "font.size": 9}


@dataclass(frozen=True)
class Point:
    """One validated artifact on a scatter plot."""

    label: str  # legend entry
    colour_key: str  # points with the same key share a colour (an artifact, or a report)
    marker_key: str  # ... and the same marker (the artifact's kind)
    size: float  # bytes
    latency: float  # p90 ms
    accuracy: float  # percent


@dataclass(frozen=True)
class Line:
    """A budget drawn on a plot: everything beyond ``value`` is out of budget."""

    value: float
    label: str


def _human_bytes(value: float, _pos=None) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= scale:
            return f"{value / scale:g} {unit}"
    return f"{value:g} B"


def _plain_ms(value: float, _pos=None) -> str:
    return f"{value:g}"


def _mantissa(value: float) -> int:
    return round(value / 10 ** math.floor(math.log10(value) + 1e-9)) if value > 0 else 0


def _indexer(keys: Sequence[str]) -> Callable[[str], int]:
    """Index of each key in order of first appearance, so colours follow the table's order."""
    order: dict[str, int] = {}
    for key in keys:
        order.setdefault(key, len(order))
    return order.__getitem__


def _svg(fig, salt: str) -> str:
    """Serialise ``fig`` as inline SVG whose ids cannot clash with another figure's."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": salt, "svg.fonttype": "path"}):
        # All-None metadata makes matplotlib omit the <metadata> block (creator, date).
        fig.savefig(
            buf,
            format="svg",
            metadata={"Date": None, "Creator": None, "Format": None, "Type": None},
        )
    text = buf.getvalue()
    text = text[text.index("<svg") :]
    # The page sizes the figure (width 100 %, aspect from the viewBox); namespaces are implied
    # for <svg> inside HTML, and dropping them keeps the page free of any URL at all.
    head_end = text.index(">")
    head = re.sub(r'\s(?:width|height|xmlns(?::xlink)?)="[^"]*"', "", text[:head_end])
    head += f' role="img" aria-label="{salt}"'
    text = head + text[head_end:]
    ids = set(re.findall(r'\bid="([^"]+)"', text))

    def prefix(m: re.Match) -> str:
        return f"{m.group(1)}{salt}-{m.group(2)}" if m.group(2) in ids else m.group(0)

    return re.sub(r'(\bid="|href="#|url\(#)([^")]+)', prefix, text)


def _figure(height_in: float):
    # A bare Figure, not pyplot: no global figure registry, no GUI backend, thread-safe.
    from matplotlib.figure import Figure

    return Figure(figsize=(FIG_WIDTH_IN, height_in), layout="constrained")


def _log_limits(values: Sequence[float]) -> tuple[float, float]:
    allv = [v for v in values if v > 0]
    if not allv:  # a log axis cannot show zero; an all-zero plot still renders
        return 0.1, 10.0
    lo, hi = min(allv), max(allv)
    return lo / 1.6, hi * 1.6


def place_lines(
    values: Sequence[float], lines: Sequence[Line]
) -> tuple[tuple[float, float], list[Line], list[Line]]:
    """The log axis range, the budget lines drawn in it, and those left off it.

    A budget within NEAR_DECADES of the data widens the axis to show it; one further away
    (the default 50 MB for a 100 kB model) would squash every point into a sliver, so it is
    not drawn but named at the edge of the plot it lies beyond.
    """
    lo, hi = _log_limits(values)
    near = 10**NEAR_DECADES
    shown = [ln for ln in lines if ln.value > 0 and lo / near <= ln.value <= hi * near]
    off = [ln for ln in lines if ln not in shown]
    if shown:
        lo, hi = _log_limits([*values, *(ln.value for ln in shown)])
    return (lo, hi), shown, off


def label_offsets(xy: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Where each point's number goes, in points from the marker: markers that overlap
    (closer than MARKER_PT on the page) get their numbers stacked one above the other."""
    offsets: list[tuple[float, float]] = []
    for i, (x, y) in enumerate(xy):
        below = sum(math.dist((x, y), xy[j]) < MARKER_PT for j in range(i))
        offsets.append((7.0, 5.0 + 10.0 * below))
    return offsets


def _page_xy(
    xs: Sequence[float], ys: Sequence[float], xlim: tuple[float, float], ylim: tuple[float, float]
) -> list[tuple[float, float]]:
    # Roughly where the axes put each point on the page (in points): log x, linear y.
    w, h = FIG_WIDTH_IN * 72 * 0.85, 4.6 * 72 * 0.6
    span_x = math.log10(xlim[1] / xlim[0])
    return [
        (
            w * math.log10(max(x, 1e-30) / xlim[0]) / span_x,
            h * (y - ylim[0]) / (ylim[1] - ylim[0]),
        )
        for x, y in zip(xs, ys, strict=True)
    ]


def _off_scale(ax, off: Sequence[Line], xlim: tuple[float, float]) -> None:
    for i, ln in enumerate(off):
        right = ln.value > xlim[1]
        ax.annotate(
            f"{ln.label} {'→' if right else '←'} off scale",
            (1.0 if right else 0.0, 1.0),
            xycoords="axes fraction",
            xytext=(-4 if right else 4, -4 - 11 * i),
            textcoords="offset points",
            color=BUDGET_COLOUR,
            fontsize=8,
            ha="right" if right else "left",
            va="top",
            gid=f"offscale-{i}",
        )
        if not right:  # every point is beyond a ceiling below the data: shade it all
            ax.axvspan(*xlim, color=BUDGET_COLOUR, alpha=0.06, zorder=1)


def scatter_svg(
    points: Sequence[Point],
    *,
    x: str,
    accuracy_lines: Sequence[Line],
    x_lines: Sequence[Line],
    name: str,
    emulated: bool = False,
) -> str:
    """Accuracy against size (``x='size'``) or p90 latency (``x='latency'``), log x axis.

    Budgets: a horizontal line per accuracy floor, a vertical line per size/latency ceiling,
    and the out-of-budget side of each lightly shaded so a point there stands out.
    """
    import matplotlib
    from matplotlib.ticker import FuncFormatter

    # Fonts are chosen when artists are made, so the context covers drawing, not just saving.
    with matplotlib.rc_context(_STYLE):
        fig = _figure(4.6)
        ax = fig.add_subplot()
        colour = _indexer([p.colour_key for p in points])
        marker = _indexer([p.marker_key for p in points])
        xs = [p.size if x == "size" else p.latency for p in points]
        (x_lo, x_hi), x_shown, x_off = place_lines(xs, x_lines)
        ys = [p.accuracy for p in points] + [ln.value for ln in accuracy_lines]
        pad = max(0.5, (max(ys) - min(ys)) * 0.12)
        y_lo, y_hi = min(ys) - pad, min(100.0 + pad / 4, max(ys) + pad)
        page_xy = _page_xy(xs, [p.accuracy for p in points], (x_lo, x_hi), (y_lo, y_hi))
        for i, (p, xv, off) in enumerate(zip(points, xs, label_offsets(page_xy), strict=True)):
            # A marker drawn over another is smaller, so both stay visible as rings.
            under = round((off[1] - 5.0) / 10.0)
            ax.scatter(
                [xv],
                [p.accuracy],
                s=70 / (1 + under),
                label=f"{i + 1}: {p.label}",
                alpha=0.85,
                color=PALETTE[colour(p.colour_key) % len(PALETTE)],
                marker=MARKERS[marker(p.marker_key) % len(MARKERS)],
                edgecolors="#222222",
                linewidths=0.8,
                zorder=3 + under,
                gid=f"point-{i + 1}",
            )
            ax.annotate(
                str(i + 1),
                (xv, p.accuracy),
                xytext=off,
                textcoords="offset points",
                fontsize=7.5,
                color="#222222",
                gid=f"label-{i + 1}",
            )
        ax.set_xscale("log")
        for ln in accuracy_lines:
            ax.axhline(ln.value, color=BUDGET_COLOUR, linestyle="--", linewidth=1.2, zorder=2)
            ax.axhspan(y_lo, ln.value, color=BUDGET_COLOUR, alpha=0.06, zorder=1)
            ax.annotate(
                ln.label,
                (x_lo, ln.value),
                xytext=(4, 3),
                textcoords="offset points",
                color=BUDGET_COLOUR,
                fontsize=8,
                va="bottom",
            )
        _off_scale(ax, x_off, (x_lo, x_hi))
        for ln in x_shown:
            ax.axvline(ln.value, color=BUDGET_COLOUR, linestyle=":", linewidth=1.4, zorder=2)
            ax.axvspan(ln.value, x_hi, color=BUDGET_COLOUR, alpha=0.06, zorder=1)
            ax.annotate(
                ln.label,
                (ln.value, y_hi),
                xytext=(-4, -4),
                textcoords="offset points",
                color=BUDGET_COLOUR,
                fontsize=8,
                ha="right",
                va="top",
                rotation=90,
            )
        ax.set_xlim(x_lo, x_hi)
        ax.set_ylim(y_lo, y_hi)
        label = _human_bytes if x == "size" else _plain_ms
        ax.xaxis.set_major_formatter(FuncFormatter(label))
        # Over a narrow range a log axis may hold no power of ten: label 2x and 5x as well.
        decades = math.log10(x_hi / x_lo)
        shown = (2, 3, 5) if decades < 1.2 else (2, 5) if decades < 2.5 else ()
        ax.xaxis.set_minor_formatter(
            FuncFormatter(lambda v, _pos: label(v) if _mantissa(v) in shown else "")
        )
        if x == "size":
            ax.set_xlabel("file size (bytes, log scale)")
        else:
            kind = "emulated p90 latency" if emulated else "p90 latency"
            ax.set_xlabel(f"{kind} (ms per image, batch 1, log scale)")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.yaxis.set_major_formatter(FuncFormatter(fmt_acc))
        ax.grid(True, which="major", color="#dddddd", linewidth=0.6, zorder=0)
        ax.legend(
            loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8.5, frameon=False
        )
        return _svg(fig, name)


def sparsity_svg(layers: Sequence[dict], target: float | None, name: str) -> str:
    """Horizontal bars: the fraction of zero weights in each prunable layer, graph order."""
    import matplotlib

    with matplotlib.rc_context(_STYLE):
        fig = _figure(1.0 + 0.32 * max(len(layers), 2))
        ax = fig.add_subplot()
        names = [f"{la['name']} ({la.get('kind', '?')})" for la in layers]
        values = [100.0 * float(la.get("sparsity") or 0.0) for la in layers]
        pos = list(range(len(layers)))
        ax.barh(pos, values, color=PALETTE[0], height=0.6, zorder=3)
        for y, la, v in zip(pos, layers, values, strict=True):
            ax.annotate(
                f"{v:.1f} %  of {int(la.get('params') or 0):,}",
                (v, y),
                xytext=(4, 0),
                textcoords="offset points",
                va="center",
                fontsize=8,
            )
        if target is not None and not math.isnan(target):
            ax.axvline(100 * target, color=BUDGET_COLOUR, linestyle="--", linewidth=1.2)
            ax.annotate(
                f"target {100 * target:g} % (whole model)",
                (100 * target, -0.5),
                xytext=(4, -2),
                textcoords="offset points",
                color=BUDGET_COLOUR,
                fontsize=8,
                va="top",
            )
        ax.set_yticks(pos, names)
        ax.invert_yaxis()  # first layer on top, as in the table
        ax.set_xlim(0, 118)
        ax.set_xlabel("zero weights (%)")
        ax.grid(True, axis="x", color="#dddddd", linewidth=0.6, zorder=0)
        return _svg(fig, name)
