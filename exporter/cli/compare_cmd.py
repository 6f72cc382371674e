"""``edgepack compare DIR_OR_REPORT...``: reports side by side, in the terminal and as HTML."""

from __future__ import annotations

import sys
from pathlib import Path

import click

DEFAULT_HTML = Path("compare.html")


@click.command("compare")
@click.argument("inputs", nargs=-1, required=True, metavar="DIR_OR_REPORT...")
@click.option(
    "--html",
    "html_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_HTML,
    show_default=True,
    help="where to write the comparison page",
)
@click.option("--force", is_flag=True, help="replace an existing --html file")
def command(inputs, html_path, force):
    """Compare the reports of output directories (report.json and checks/*.json) or files.

    Prints one table (a row per report and artifact) and writes one self-contained HTML page.
    Exit code 0, or 2 for bad input (nothing is written then).
    """
    from rich.console import Console

    from exporter.common.atomic import check_writable
    from exporter.report.compare import load_entries, print_compare, write_compare_html

    entries = load_entries(inputs)
    # Refuse before printing anything, so a refused run leaves one line and no output.
    check_writable(html_path, force)
    tty = sys.stdout.isatty()
    # Off a TTY (CI logs, pipes) rich would squeeze the table into 80 columns.
    print_compare(entries, Console(no_color=not tty, highlight=False, width=None if tty else 160))
    write_compare_html(entries, html_path, force=force)
    click.echo(f"html: {html_path}")
