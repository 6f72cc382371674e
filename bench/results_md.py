"""bench/RESULTS.md is shared: each benchmark rewrites its own "## " section and keeps the rest."""

from __future__ import annotations

from pathlib import Path


def replace_section(path: Path, heading: str, section: str, before: str | None = None) -> None:
    """Replace the section that starts with the line ``heading`` (up to the next "## " heading)
    by ``section``; a new one goes before the first line starting with ``before``, else at the
    end."""
    lines = path.read_text().splitlines(keepends=True) if path.is_file() else ["# Benchmarks\n"]
    start = next((i for i, ln in enumerate(lines) if ln.rstrip() == heading), None)
    if start is None:
        at = next((i for i, ln in enumerate(lines) if before and ln.startswith(before)), len(lines))
        head = "".join(lines[:at]).rstrip("\n") + "\n\n"
        tail = "".join(lines[at:])
        path.write_text(head + section + ("\n" + tail if tail else ""))
        return
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    tail = "".join(lines[end:])
    path.write_text("".join(lines[:start]) + section + ("\n" + tail if tail else ""))
