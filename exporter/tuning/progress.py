"""One line per finished trial: its figures, trials done, the best feasible so far, time left."""

from __future__ import annotations

import time

import optuna

from exporter.common.progress import stderr_console
from exporter.recipe import Recipe

_UNIT = {"size": "B", "latency": "ms", "instructions": "instr"}


def describe(value: float | None, objective: str) -> str:
    if value is None:
        return "–"
    if objective == "latency":
        return f"{value:.3f} ms"
    return f"{value:,.0f} {_UNIT[objective]}"


class ProgressLine:
    """An Optuna callback printing to stderr (silent with -q)."""

    def __init__(self, config: dict, recipe: Recipe, start: float, quiet: bool):
        self.config, self.start = config, start
        self.console = stderr_console(quiet)
        self.quiet = quiet

    def say(self, line: str) -> None:
        if not self.quiet:
            self.console.print(line, highlight=False)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if self.quiet:
            return
        from exporter.tuning.front import pareto

        objective = self.config["objective"]
        trials = study.get_trials(deepcopy=False)
        finished = [t for t in trials if t.state.is_finished()]
        m = trial.user_attrs.get("metrics")
        what = (
            f"{describe(m['objective'], objective)} at {m['accuracy']:.2f} % "
            f"(drop {m['accuracy_drop']:+.2f})"
            if m and trial.state == optuna.trial.TrialState.COMPLETE
            else trial.state.name.lower()
        )
        if "repeat_of" in trial.user_attrs:
            what += f" (the recipe of trial {trial.user_attrs['repeat_of']}: not run again)"
        if trial.state == optuna.trial.TrialState.FAIL and trial.user_attrs.get("fail_reason"):
            what += f" ({trial.user_attrs['fail_reason'][:160]})"
        front = pareto(trials)
        best = (
            f"best feasible: {describe(front[0].values[1], objective)} at "
            f"{front[0].values[0]:.2f} % (trial {front[0].number})"
            if front
            else "no feasible trial yet"
        )
        left = ""
        timeout = self.config.get("timeout_s")
        if timeout:
            remaining = max(0.0, timeout - (time.monotonic() - self.start))
            left = f"; {remaining / 60:.1f} min left"
        self.console.print(
            f"trial {trial.number}: {what} — {len(finished)}/{self.config['trials']} done; "
            f"{best}{left}",
            highlight=False,
        )
