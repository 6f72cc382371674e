"""--timeout bounds the whole invocation: the search stops when another trial plus the front's
rebuild and best/ (estimated from the trials' own wall times) would not fit in the time left.

Trials here report a wall time instead of spending it, so the arithmetic is exact."""

from __future__ import annotations

import time

import optuna
import pytest

from exporter.tuning.deadline import Deadline, finishing_s, next_trial_s


def _study(walls: list[float], values: list[tuple[float, float]], deadline: Deadline):
    """Run up to len(walls) trials, trial i 'taking' walls[i] seconds with (accuracy, bytes)
    values[i], all feasible; returns the study."""
    study = optuna.create_study(directions=["maximize", "minimize"])

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        trial.set_user_attr("wall_s", walls[trial.number])
        trial.set_user_attr("constraints", [0.0])
        return values[trial.number]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=len(walls), callbacks=[deadline])
    return study


def test_the_search_stops_when_the_next_trial_and_the_rebuild_would_not_fit():
    said = []
    # 100 s trials; after trial 0 the front is {0}: rebuild 100 + best/ 100 + next 100 = 300.
    deadline = Deadline(250.0, time.monotonic(), front_max=6, say=said.append)
    study = _study([100.0] * 5, [(90.0, 1000.0)] * 5, deadline)
    assert len(study.trials) == 1
    assert deadline.reason is not None and "would not fit" in deadline.reason
    assert said == [deadline.reason]


def test_the_estimate_grows_with_the_front_and_uses_its_costliest_member_for_best():
    # Each trial a new front member (more accurate, bigger): after trial k the front has k+1
    # members of 100 s (and one of 300 s from trial 1 on): the reserve grows until it no
    # longer fits 1050 s.
    walls = [100.0, 300.0, 100.0, 100.0, 100.0, 100.0, 100.0]
    values = [(80.0 + i, 1000.0 + i) for i in range(len(walls))]
    deadline = Deadline(1050.0, time.monotonic(), front_max=6)
    study = _study(walls, values, deadline)
    # after trial 0: 100 + 100 + next (median 100) = 300 fits
    # after trial 1: 400 + 300 + median 200 = 900 fits
    # after trial 2: 500 + 300 + median 100 = 900 fits
    # after trial 3: 600 + 300 + 100 = 1000 fits
    # after trial 4: 700 + 300 + 100 = 1100: stop
    assert len(study.trials) == 5
    assert finishing_s(study.trials, 6) == pytest.approx(1000.0)


def test_only_the_front_members_that_would_be_rebuilt_count():
    walls = [100.0] * 4
    values = [(80.0 + i, 1000.0 + i) for i in range(4)]
    study = _study(walls, values, Deadline(None, time.monotonic(), front_max=6))
    assert finishing_s(study.trials, 6) == pytest.approx(500.0)  # 4 members + best/
    assert finishing_s(study.trials, 2) == pytest.approx(300.0)  # front_max 2: 2 + best/


def test_without_timeout_nothing_is_reserved():
    deadline = Deadline(None, time.monotonic(), front_max=6)
    study = _study([1e6] * 3, [(90.0, 1000.0)] * 3, deadline)
    assert len(study.trials) == 3 and deadline.reason is None


def test_repeats_of_an_earlier_recipe_do_not_lower_the_next_trial_estimate():
    study = optuna.create_study(directions=["maximize", "minimize"])

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        if trial.number:
            trial.set_user_attr("repeat_of", 0)
        trial.set_user_attr("wall_s", 0.0 if trial.number else 100.0)
        return 90.0, 1000.0

    study.optimize(objective, n_trials=4)
    assert next_trial_s(study.trials) == pytest.approx(100.0)
