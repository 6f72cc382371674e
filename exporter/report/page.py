"""What the HTML report and the comparison page share: the page shell, CSS, tables, numbers.

Every page is one self-contained file: inline CSS, inline SVG figures, no script, no font or
stylesheet to fetch, so it opens the same from a CI artifact, an e-mail or an air-gapped laptop.
Every piece of text that comes from a report goes through :func:`esc`.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence

CSS = """
:root { --ok: #1e7b34; --bad: #b3261e; --muted: #5f6368; --line: #dadce0; --soft: #f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1240px; padding: 16px 24px 48px; color: #202124;
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
h1 { font-size: 22px; margin: 4px 0 2px; }
h2 { font-size: 17px; margin: 28px 0 8px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
.sub { color: var(--muted); margin: 0 0 12px; }
.verdict { border-radius: 8px; padding: 12px 16px; margin: 12px 0 4px; border: 2px solid; }
.verdict.pass { border-color: var(--ok); background: #e6f4ea; }
.verdict.fail { border-color: var(--bad); background: #fce8e6; }
.verdict.moot { border-color: #b06000; background: #fef7e0; } .moot .word { color: #b06000; }
.verdict .word { font-size: 24px; font-weight: 700; letter-spacing: .04em; }
.pass .word { color: var(--ok); } .fail .word { color: var(--bad); }
.verdict ul { margin: 6px 0 0; padding-left: 20px; }
.tag { display: inline-block; min-width: 64px; font-weight: 700; font-size: 12px; }
.tag.ok { color: var(--ok); } .tag.bad { color: var(--bad); } .tag.na { color: var(--muted); }
table { border-collapse: collapse; margin: 4px 0 8px; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 7px; border-bottom: 1px solid var(--line); text-align: left;
  vertical-align: top; }
th { background: var(--soft); font-weight: 600; }
table.art { font-size: 13px; }
th.num { text-align: right; }
td.num { text-align: right; white-space: nowrap; }
td.bad { color: var(--bad); font-weight: 600; background: #fce8e6; }
tr.bad td { background: #fce8e6; }
tr.muted td { color: var(--muted); }
tr.mark td { background: #fff4ce; font-weight: 600; }
.wide { overflow-x: auto; }
.plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(460px, 1fr)); gap: 16px; }
figure { margin: 0; border: 1px solid var(--line); border-radius: 6px; padding: 8px; }
figure svg { display: block; width: 100%; height: auto; }
figcaption { color: var(--muted); font-size: 12px; margin-top: 4px; }
.half { max-width: 760px; }
.kv { columns: 3 300px; column-gap: 24px; font: 12px/1.6 ui-monospace, "DejaVu Sans Mono",
  monospace; padding: 0; margin: 4px 0; list-style: none; }
.kv li { break-inside: avoid; overflow-wrap: anywhere; }
.kv .k { color: var(--muted); }
.chip { display: inline-block; padding: 1px 8px; margin: 2px 4px 2px 0; border-radius: 10px;
  background: #e8f0fe; font: 12px ui-monospace, "DejaVu Sans Mono", monospace; }
.note { color: var(--muted); font-size: 13px; }
.flag { color: #8a5300; font-weight: 600; font-size: 10px; margin-left: 2px; }
td.path { white-space: nowrap; }
"""


def esc(value: object) -> str:
    """Text from a report, safe inside an element or a quoted attribute."""
    return html.escape("" if value is None else str(value), quote=True)


def page(title: str, body: Iterable[str]) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


class Cell:
    """A table cell whose content is already HTML; ``num`` right-aligns, ``bad`` highlights."""

    def __init__(self, markup: str, *, num: bool = False, bad: bool = False, span: int = 1):
        self.markup, self.num, self.bad, self.span = markup, num, bad, span


def cell(value: object, *, num: bool = False, bad: bool = False, span: int = 1) -> Cell:
    return Cell(esc(value), num=num, bad=bad, span=span)


def table(
    headers: Sequence[str],
    rows: Iterable[tuple[Sequence[Cell], str]],
    num_cols: Iterable[int] = (),
    css: str = "",
) -> str:
    """An HTML table; each row is (cells, css class of the row or '')."""
    nums = set(num_cols)
    head = "".join(
        f'<th class="num">{esc(h)}</th>' if i in nums else f"<th>{esc(h)}</th>"
        for i, h in enumerate(headers)
    )
    body = []
    for cells, cls in rows:
        tds = []
        for c in cells:
            classes = " ".join(k for k, on in (("num", c.num), ("bad", c.bad)) if on)
            attrs = (f' class="{classes}"' if classes else "") + (
                f' colspan="{c.span}"' if c.span > 1 else ""
            )
            tds.append(f"<td{attrs}>{c.markup}</td>")
        attr = f' class="{cls}"' if cls else ""
        body.append(f"<tr{attr}>{''.join(tds)}</tr>")
    attr = f' class="{css}"' if css else ""
    return (
        f'<div class="wide"><table{attr}><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{esc(caption)}</figcaption></figure>"


def kv_list(items: Iterable[tuple[str, object]]) -> str:
    lis = "".join(
        f'<li><span class="k">{esc(k)}</span>=<span>{esc(v)}</span></li>' for k, v in items
    )
    return f'<ul class="kv">{lis}</ul>'


def chips(values: Iterable[object]) -> str:
    return "".join(f'<span class="chip">{esc(v)}</span>' for v in values)


# --- numbers: one place, so the report and the comparison print them the same way ---------


def fmt(value: object, spec: str, missing: str = "–") -> str:
    if value is None or isinstance(value, bool):
        return missing
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def fmt_acc(value: object, _pos: object = None) -> str:
    """An accuracy in percent as every table prints it; the plots' axes use it too, so a tick
    and a table cell never round the same number differently."""
    return fmt(value, ".2f")


def fmt_ms(value: object) -> str:
    # Latencies span 0.004 ms (digits on x86) to seconds (emulated ARM): 3 significant digits.
    return fmt(value, ".3g")


BUDGET_WORDS = {
    "max_accuracy_drop": "accuracy drop at most {lim:g} points",
    "min_agreement": "top-1 agreement with the original at least {lim:g}",
    "max_latency_p90_ms": "p90 latency at most {lim:g} ms",
    "max_bytes": "file size at most {lim:,} bytes",
    "max_arena_bytes": "tensor arena at most {lim:,.0f} bytes",
    "max_flash_bytes": "model in flash at most {lim:,.0f} bytes",
}

# Which artifact-table column each budget judges, to highlight the failing cell.
BUDGET_COLUMN = {
    "max_accuracy_drop": "drop",
    "min_agreement": "agreement",
    "max_latency_p90_ms": "p90",
    "max_bytes": "bytes",
    "max_arena_bytes": "arena",
    "max_flash_bytes": "bytes",
}


def budget_words(name: str, limit: object) -> str:
    template = BUDGET_WORDS.get(name)
    if template is None or not isinstance(limit, int | float):
        return f"{name} = {limit}"
    return template.format(lim=limit)


def failed_budgets(artifact: dict) -> list[str]:
    return [n for n, b in (artifact.get("budgets") or {}).items() if not b.get("ok", True)]


VERDICT_WORDS = {"passed": "PASSED", "failed": "FAILED", "not_meaningful": "NOT MEANINGFUL"}


def report_verdict(report: dict) -> str:
    """`passed`, `failed` or `not_meaningful` (reports without `verdict`: from `passed`)."""
    return report.get("verdict") or ("passed" if report.get("passed") else "failed")


def artifact_verdict(artifact: dict) -> tuple[str, str]:
    """(short word, css class) for one artifact: ok, FAIL <budgets>, skipped, error."""
    status = artifact.get("status")
    if status == "ok":
        failed = failed_budgets(artifact)
        return ("FAIL " + ", ".join(failed), "bad") if failed else ("ok", "ok")
    if status == "skipped":
        return "skipped", "na"
    return "error", "bad"
