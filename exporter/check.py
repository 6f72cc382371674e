"""`edgepack check`: validate an existing output directory again, on any target."""

from __future__ import annotations

import json
from pathlib import Path

from exporter import __version__
from exporter.artifacts import load_manifest
from exporter.atomic import atomic_path
from exporter.errors import InputFileError
from exporter.progress import make_progress, stderr_console
from exporter.recipe import load_recipe
from exporter.report import build_report, print_table
from exporter.report_html import render_html
from exporter.validate import EVAL_BATCH, make_runner, validate

REPORT = "report.json"
CHECKS_DIR = "checks"


def check_dir(out_dir: Path, target: str, *, host: str | None = None,
              overrides: tuple[str, ...] = (), force: bool = False, quiet: bool = False) -> dict:
    """Validate the artifacts of ``out_dir`` on ``target``; write checks/<target>.json."""
    artifacts = load_manifest(out_dir)
    try:
        original = json.loads((out_dir / REPORT).read_text())
    except (OSError, ValueError) as exc:
        raise InputFileError(f"{out_dir / REPORT}: unreadable ({exc})") from None
    if not (out_dir / EVAL_BATCH).is_file():
        raise InputFileError(f"{out_dir / EVAL_BATCH} is missing: re-run `edgepack run`")
    recipe = load_recipe(target, overrides)
    dest = out_dir / CHECKS_DIR / f"{recipe.name}.json"
    runner = make_runner(recipe, host)
    with make_progress(quiet) as progress:
        check = validate(out_dir, artifacts, recipe, progress, runner)
    report = build_report(
        target={"name": recipe.name, "source": recipe.source, "device": recipe.device.kind,
                "description": recipe.description, "host": host or recipe.device.host},
        model=original["model"], data=original["data"], recipe=recipe.to_dict(),
        reference=original["reference"], artifacts=artifacts, check=check,
        extra={"edgepack_version": __version__, "checked_dir": str(out_dir)},
    )
    with atomic_path(dest, force=force) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    with atomic_path(dest.with_suffix(".html"), force=True) as tmp:  # force: json decided
        tmp.write_text(render_html(report))
    if not quiet:
        print_table(report, stderr_console())
    return report
