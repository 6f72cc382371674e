"""`edgepack check`: validate an existing output directory again, on any target."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from exporter import __version__
from exporter.artifacts import load_index
from exporter.common.atomic import atomic_path, check_writable
from exporter.common.progress import make_progress, stderr_console
from exporter.errors import InputFileError
from exporter.outdir import EVAL_BATCH, REPORT, check_html, check_report
from exporter.recipe import load_recipe
from exporter.report.build import build_report, print_table, reference_for
from exporter.report.html import render_html
from exporter.report.schema import Reference, Target, read_report
from exporter.targets.validate import make_runner, validate
from runtime_check.batch import PER_IMAGE


def _eval_subset(
    batch: Path, reference: Reference, samples: int, seed: int, scratch: Path
) -> tuple[Path, Reference]:
    """The target recipe's ``eval.samples`` images of the batch (emulated targets use fewer),
    with the reference accuracy recomputed on exactly those images so drops stay comparable."""
    try:
        with np.load(batch, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as exc:
        raise InputFileError(f"{batch}: not a readable eval batch ({exc})") from None
    if "labels" not in data or "reference_logits" not in data:
        raise InputFileError(f"{batch} lacks labels or reference_logits: re-run `edgepack run`")
    n = len(data["labels"])
    if samples >= n:
        return batch, reference
    idx = np.sort(np.random.default_rng(seed).choice(n, samples, replace=False))
    # The normalization (mean, std) is per channel, not per image: kept whole.
    subset = {k: v[idx] if k in PER_IMAGE else v for k, v in data.items()}
    path = scratch / EVAL_BATCH
    np.savez(path, **subset)
    acc = float((subset["reference_logits"].argmax(1) == subset["labels"]).mean() * 100.0)
    return path, reference_for(
        acc,
        subset["labels"],
        params=reference.params,
        macs=reference.macs,
        note=f"{samples} of the {n} eval images (the target's eval.samples); "
        f"the original model's accuracy on all of them was "
        f"{reference.accuracy:.2f} %",
    )


def check_dir(
    out_dir: Path,
    target: str,
    *,
    host: str | None = None,
    overrides: tuple[str, ...] = (),
    force: bool = False,
    quiet: bool = False,
) -> dict:
    """Validate the artifacts of ``out_dir`` on ``target``; write checks/<target>.json."""
    artifacts = load_index(out_dir)
    original = read_report(out_dir / REPORT)
    if not (out_dir / EVAL_BATCH).is_file():
        raise InputFileError(f"{out_dir / EVAL_BATCH} is missing: re-run `edgepack run`")
    recipe = load_recipe(target, overrides)
    dest = check_report(out_dir, recipe.name)
    # Refused before validating, which takes minutes on QEMU or a device; written with the same
    # rule at the end.
    check_writable(dest, force)
    runner = make_runner(recipe, host)
    with tempfile.TemporaryDirectory(prefix="edgepack-check-") as scratch:
        batch, reference = _eval_subset(
            out_dir / EVAL_BATCH,
            original.reference,
            recipe.eval.samples,
            recipe.eval.seed,
            Path(scratch),
        )
        with make_progress(quiet) as progress:
            check = validate(out_dir, artifacts, recipe, progress, runner, batch)
    report = build_report(
        target=Target(
            name=recipe.name,
            source=recipe.source,
            device=recipe.device.kind,
            description=recipe.description,
            host=host or recipe.device.host,
        ),
        model=original.model,
        data=original.data,
        recipe=recipe.to_dict(),
        reference=reference,
        artifacts=artifacts,
        check=check,
        edgepack_version=__version__,
        checked_dir=str(out_dir),
    ).to_dict()
    with atomic_path(dest, force=force) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    with atomic_path(check_html(out_dir, recipe.name), force=True) as tmp:  # force: json decided
        tmp.write_text(render_html(report))
    if not quiet:
        print_table(report, stderr_console())
    return report
