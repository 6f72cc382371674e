"""What a study leaves in --out: tune.json, tune.html, best.toml, best/ and front/."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import optuna
from rich.table import Table

from exporter import __version__
from exporter.common.progress import stderr_console
from exporter.common.typed_json import from_json, to_json
from exporter.recipe import Recipe
from exporter.tuning.front import (
    choose,
    feasible,
    figures_of,
    install_best,
    pareto,
    validate_front,
)
from exporter.tuning.objective import Prepared
from exporter.tuning.progress import describe
from exporter.tuning.schema import (
    TUNE_SCHEMA_VERSION,
    Figures,
    TrialRecord,
    TuneReport,
    write_tune,
)
from exporter.tuning.study import redact

TUNE_JSON = "tune.json"
TUNE_HTML = "tune.html"


def trial_record(t: optuna.trial.FrozenTrial) -> TrialRecord:
    m = t.user_attrs.get("metrics")
    complete = t.state == optuna.trial.TrialState.COMPLETE
    return TrialRecord(
        number=t.number,
        state=t.state.name,
        params=dict(t.params),
        overrides=list(t.user_attrs.get("overrides", [])),
        host=t.user_attrs.get("host"),
        wall_s=t.user_attrs.get("wall_s"),
        tuning=from_json(Figures, m, "metrics") if m and complete else None,
        feasible=feasible(t) if complete else None,
        constraints=list(t.user_attrs.get("constraints", [])),
        first_epoch_drop=t.user_attrs.get("first_epoch_drop"),
        retry_of=optuna.storages.RetryFailedTrialCallback.retried_trial_number(t),
        repeat_of=t.user_attrs.get("repeat_of"),
        fail_reason=t.user_attrs.get("fail_reason"),
    )


def _console_table(report: TuneReport, objective: str, quiet: bool) -> None:
    console = stderr_console(quiet)
    table = Table(title=f"Pareto front ({objective}), validated on the eval data")
    for col in ("trial", "artifact", "tuning", "eval", "eval acc %", "drop", "holds", "recipe"):
        table.add_column(col)
    for m in report.front:
        ev = m.eval
        table.add_row(
            str(m.trial) + (" *" if m.trial == report.chosen else ""),
            m.tuning.artifact,
            describe(m.tuning.objective, objective),
            describe(ev.objective if ev else None, objective),
            f"{ev.accuracy:.2f}" if ev and ev.accuracy is not None else "–",
            f"{ev.accuracy_drop:+.2f}" if ev and ev.accuracy_drop is not None else "–",
            "yes" if m.eval_passed else "no",
            m.recipe,
        )
    console.print(table)
    console.print(f"chosen: {report.chosen_note}")


def write_outputs(
    study: optuna.Study,
    config: dict,
    recipe: Recipe,
    prepared: Prepared,
    out: Path,
    name: str,
    url: str,
    start: float,
    quiet: bool,
    search_stop: str | None = None,
) -> dict:
    trials = study.get_trials(deepcopy=False)
    front = pareto(trials)[: recipe.tune.front_max]
    members = validate_front(front, config, prepared, out, name)
    best, why = choose(members)
    best_figures = None
    best_passed = None
    if best is not None:
        best_report = install_best(out, best, config, quiet=True)
        best_figures = figures_of(best_report, best.tuning.artifact, config["objective"])
        best_passed = bool(best_report.get("passed"))
        if not best_passed:
            # best/ is the user's `edgepack run --target best.toml`: its verdict is the last word.
            reasons = "; ".join(best_report.get("reasons") or [])[:400]
            why += f"; but best/ (edgepack run of best.toml) did not pass: {reasons}"
    budgets = {k: v for k, v in dataclasses.asdict(recipe.budgets).items() if v is not None}
    report = TuneReport(
        schema_version=TUNE_SCHEMA_VERSION,
        study=name,
        storage=redact(url),
        objective=config["objective"],
        directions=["maximize accuracy", f"minimize {config['objective']}"],
        sampler=recipe.tune.sampler,
        target=config["target"],
        model=config["model"],
        weights=config["weights"],
        data=config["data"],
        tuning_split=prepared.note,
        reference_tuning_accuracy=prepared.reference_accuracy,
        budgets=budgets,
        trials=[trial_record(t) for t in trials],
        front=members,
        chosen=best.trial if best else None,
        chosen_note=f"trial {best.trial}: {why}" if best else why,
        best=best_figures,
        best_passed=best_passed,
        search_stop=search_stop,
        wall_s=round(time.monotonic() - start, 1),
        edgepack_version=__version__,
    )
    write_tune(report, out / TUNE_JSON)
    from exporter.tuning.html import write_tune_html

    write_tune_html(report, out / TUNE_HTML)
    _console_table(report, config["objective"], quiet)
    return to_json(report)
