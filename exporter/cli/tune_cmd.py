"""``edgepack tune``: an Optuna study of recipes against a target's budgets."""

from __future__ import annotations

import re
from pathlib import Path

import click

from exporter.cli.options import FLOATS
from exporter.errors import EXIT_BUDGET_FAILED, EXIT_OK, RecipeError

_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_timeout(text: str | None) -> float | None:
    """``45m``, ``1h``, ``90s`` or plain seconds."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not match or float(match.group(1)) <= 0:
        raise RecipeError(f"--timeout {text!r}: expected a duration such as 90s, 45m or 1h")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


@click.command("tune")
@click.option("--model", help="as for `edgepack run` (not with --worker)")
@click.option("--weights", type=click.Path(dir_okay=False), help="state_dict (.pt)")
@click.option("--data", default="digits", show_default=True, help="as for `edgepack run`")
@click.option("--eval-data", help="eval data for the final front (default: a hold-out of --data)")
@click.option("--target", default="x86_64", show_default=True, help="target name or recipe .toml")
@click.option(
    "--objective",
    default="size",
    show_default=True,
    help="size (bytes) | latency (p50 on the target) | instructions (QEMU targets)",
)
@click.option("--trials", type=int, default=20, show_default=True, help="trials in the study")
@click.option("--timeout", "timeout", help="bound on this invocation: 90s, 45m, 1h")
@click.option("--jobs", type=int, default=1, show_default=True, help="worker processes here")
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), help="study directory (resumes)"
)
@click.option("--storage", help="Optuna storage URL (default: sqlite in --out/study.db)")
@click.option("--study", help="study name in --storage (needed with --storage)")
@click.option("--worker", is_flag=True, help="join the --storage/--study study as a worker")
@click.option("--worker-index", type=int, default=0, hidden=True)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="override a recipe key, [tune] included (repeatable)",
)
@click.option("--mean", type=FLOATS, help="per-channel mean after /255")
@click.option("--std", type=FLOATS, help="per-channel std after /255")
@click.option("-q", "--quiet", is_flag=True, help="no progress lines or table")
@click.pass_context
def command(
    ctx, model, weights, data, eval_data, target, objective, trials, timeout, jobs, out,
    storage, study, worker, worker_index, overrides, mean, std, quiet,
):  # fmt: skip
    """Search compression recipes for TARGET with Optuna: accuracy against size, latency or
    instructions, the target's budgets as constraints. Writes tune.json, tune.html, best.toml
    and best/ into --out.

    Exit code 0 when a front trial holds every budget on the eval data and best/ passes, 1
    when not (a --worker: when a trial it ran failed), 2 for bad input.
    """
    from exporter.tuning import TuneOptions, tune

    result = tune(
        TuneOptions(
            model=model,
            out=out,
            weights=weights,
            data=data,
            eval_data=eval_data,
            target=target,
            objective=objective,
            trials=trials,
            timeout_s=parse_timeout(timeout),
            jobs=jobs,
            storage=storage,
            study=study,
            worker=worker,
            worker_index=worker_index,
            overrides=tuple(overrides),
            mean=mean,
            std=std,
            quiet=quiet,
        )
    )
    if worker and result.worker_failures:
        first = result.worker_failures[0]
        more = len(result.worker_failures) - 1
        click.echo(
            f"edgepack tune --worker: {first}" + (f" (and {more} more failed)" if more else ""),
            err=True,
        )
    if worker:
        ctx.exit(EXIT_OK if result.passed else EXIT_BUDGET_FAILED)
    ctx.exit(EXIT_OK if result.passed else EXIT_BUDGET_FAILED)
