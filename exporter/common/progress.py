"""Progress bars on stderr (rich); silent with -q, uncoloured when stderr is not a TTY."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["Progress", "make_progress", "stderr_console"]


def stderr_console(quiet: bool = False) -> Console:
    tty = sys.stderr.isatty()
    # Off a TTY (CI logs, pipes) rich would squeeze tables into 80 columns.
    return Console(
        stderr=True, quiet=quiet, no_color=not tty, highlight=False, width=None if tty else 160
    )


def make_progress(quiet: bool = False) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr_console(quiet),
        transient=False,
        disable=quiet,
    )
