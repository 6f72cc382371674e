"""`--timeout` bounds the whole invocation, not only the search: the search stops while there is
still time to rebuild and validate the front and to write best/.

The time those take is known from the study itself: rebuilding a trial does the work the trial
did (same recipe, same training images), so the front costs about the sum of its members'
trial times, and best/ one more run of the most costly member.
"""

from __future__ import annotations

import statistics
import time

import optuna

from exporter.tuning.front import pareto


def finishing_s(trials: list[optuna.trial.FrozenTrial], front_max: int) -> float:
    """Seconds the front's rebuild and best/ would take if the search stopped now."""
    walls = [float(t.user_attrs.get("wall_s") or 0.0) for t in pareto(trials)[:front_max]]
    return sum(walls) + max(walls, default=0.0)


def next_trial_s(trials: list[optuna.trial.FrozenTrial]) -> float:
    """A trial's likely cost: the median of the finished ones that ran (pruned ones included:
    the next may be pruned too; repeats of an earlier recipe cost nothing and say nothing)."""
    walls = [float(t.user_attrs["wall_s"]) for t in trials
             if t.state.is_finished() and t.user_attrs.get("wall_s") is not None
             and "repeat_of" not in t.user_attrs]  # fmt: skip
    return statistics.median(walls) if walls else 0.0


class Deadline:
    """An Optuna callback: stop the study once another trial would leave too little time."""

    def __init__(self, timeout_s: float | None, start: float, front_max: int, say=None):
        self.timeout_s, self.start, self.front_max, self.say = timeout_s, start, front_max, say
        self.reason: str | None = None

    def remaining(self) -> float | None:
        if self.timeout_s is None:
            return None
        return self.timeout_s - (time.monotonic() - self.start)

    def __call__(self, study: optuna.Study, _trial: optuna.trial.FrozenTrial) -> None:
        left = self.remaining()
        if left is None or self.reason is not None:
            return
        trials = study.get_trials(deepcopy=False)
        finish, step = finishing_s(trials, self.front_max), next_trial_s(trials)
        if step + finish > left:
            self.reason = (
                f"search stopped with {left / 60:.1f} of the --timeout's minutes left: another "
                f"trial (~{step / 60:.1f} min) and the front's rebuild and best/ "
                f"(~{finish / 60:.1f} min) would not fit"
            )
            if self.say is not None:
                self.say(self.reason)
            study.stop()
