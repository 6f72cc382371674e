"""An output never overlaps an input or the working directory: checked before any work."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from exporter.errors import OutputPathError


def _resolved(path: str | os.PathLike) -> Path:
    return Path(path).expanduser().resolve()


def check_out_path(out: str | os.PathLike, inputs: Iterable[tuple[str, str | os.PathLike]]) -> None:
    """Refuse an output that would destroy or pollute an input, or the working directory.

    ``inputs`` are ``(option, path)`` pairs. The output may not be an input, contain one (its
    replacement would delete it), or lie inside an input directory (it would become part of the
    data), nor be the current directory or one above it. Symlinks are resolved first.
    """
    target = _resolved(out)
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        where = "the current directory" if target == cwd else "above the current directory"
        raise OutputPathError(
            f"--out {out} is {where}: replacing it would delete your working directory; "
            "choose a new directory for the output"
        )
    for option, path in inputs:
        src = _resolved(path)
        if src == target:
            raise OutputPathError(
                f"--out {out} is the {option} input itself: edgepack never writes over its inputs"
            )
        if target in src.parents:
            raise OutputPathError(
                f"--out {out} contains the {option} input {path}: replacing the output would "
                "delete it; choose another --out"
            )
        if src.is_dir() and src in target.parents:
            raise OutputPathError(
                f"--out {out} is inside the {option} directory {path}: the output would become "
                "part of that input; choose another --out"
            )
