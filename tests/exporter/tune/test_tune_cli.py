"""`edgepack tune` end to end on digits through the CLI: a tiny study, its front, best.toml
reproduced by `edgepack run`, the first-epoch pruning rule, and resuming after Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import jsonschema
import optuna
import pytest
import sqlalchemy

from exporter.common.typed_json import to_json
from exporter.tuning import TuneResult, _failures_of
from exporter.tuning.schema import read_tune
from tests.exporter.tune.conftest import TINY
from tests.helpers import EDGEPACK, ROOT, invoke


def _tune_args(weights, out, *extra) -> list:
    return [
        "tune", "--model", "seed-cnn", "--weights", weights, "--data", "digits",
        "--target", "x86_64", "--objective", "size", "--out", out, "-q", *TINY, *extra,
    ]  # fmt: skip


def _dominated(a, b) -> bool:
    """b dominates a: at least as accurate and as small, better in one."""
    return (
        b.accuracy >= a.accuracy
        and b.objective <= a.objective
        and (b.accuracy > a.accuracy or b.objective < a.objective)
    )


@pytest.mark.slow
def test_tiny_study_front_and_best_toml(digits_seed, tmp_path):
    out = tmp_path / "study"
    # A tight budget and a range up to 95 % sparsity with at most one fine-tune epoch: some
    # trials cannot hold it, and they must stay off the front.
    res = invoke(
        *_tune_args(digits_seed, out, "--trials", "4", "--set", "tune.sparsity=[0.5, 0.95]",
                    "--set", "budgets.max_accuracy_drop=1.0", "--set", "tune.sampler=random",
                    "--set", "tune.front_max=2")
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    report = read_tune(out / "tune.json")
    written = json.loads((out / "tune.json").read_text())
    jsonschema.validate(written, json.loads((ROOT / "docs" / "tune.schema.json").read_text()))
    assert to_json(report) == written  # the dataclasses hold every field written
    assert [t.number for t in report.trials] == [0, 1, 2, 3]
    complete = [t for t in report.trials if t.state == "COMPLETE"]
    infeasible = {t.number for t in complete if not t.feasible}
    assert infeasible, "the study must hold an infeasible trial for this test to mean anything"
    assert all(t.constraints and max(t.constraints) > 0 for t in complete if not t.feasible)
    front = {m.trial for m in report.front}
    assert front and not front & infeasible
    feasible = [t.tuning for t in complete if t.feasible]
    for m in report.front:
        assert not any(_dominated(m.tuning, other) for other in feasible)
        # The rebuild from the recipe gives the trial's artifact byte for byte.
        assert m.eval is not None and m.eval.bytes == m.tuning.bytes
    assert report.chosen in front
    chosen = next(m for m in report.front if m.trial == report.chosen)
    trial = next(t for t in report.trials if t.number == report.chosen)
    assert (out / "best.toml").read_text().count('extends = "x86_64"') == 1
    assert all(s in (out / "best.toml").read_text() for s in ("sparsity", "[compress.prune]"))

    # `edgepack run --target best.toml` reproduces the chosen trial's artifact exactly.
    again = tmp_path / "again"
    res = invoke(
        "run", "--model", "seed-cnn", "--weights", digits_seed, "--data", "digits",
        "--target", out / "best.toml", "--out", again, "-q",
    )  # fmt: skip
    assert res.exit_code in (0, 1), res.output
    artifact = chosen.tuning.artifact
    rerun = {r["path"]: r for r in json.loads((again / "report.json").read_text())["artifacts"]}
    best = {
        r["path"]: r for r in json.loads((out / "best" / "report.json").read_text())["artifacts"]
    }
    assert rerun[artifact]["bytes"] == trial.tuning.bytes == report.best.bytes
    assert (again / artifact).read_bytes() == (out / "best" / artifact).read_bytes()
    assert rerun[artifact]["accuracy"] == best[artifact]["accuracy"] == report.best.accuracy
    html = (out / "tune.html").read_text()
    assert html.count("<svg") == 1 and "Pareto front" in html and "(chosen)" in html


def test_hopeless_trial_is_pruned_after_its_first_epoch(digits_seed, tmp_path):
    out = tmp_path / "study"
    res = invoke(
        *_tune_args(digits_seed, out, "--trials", "1", "--set", "tune.sparsity=[0.95, 0.95]",
                    "--set", "tune.epochs=[3, 3]", "--set", "tune.prune_margin=0",
                    "--set", "budgets.max_accuracy_drop=0.5")
    )  # fmt: skip
    assert res.exit_code == 1, res.output  # no front: nothing holds the budget
    (trial,) = read_tune(out / "tune.json").trials
    assert trial.state == "PRUNED" and trial.first_epoch_drop > 0.5
    assert not (out / "best.toml").exists()


def test_a_failed_trial_says_why_and_a_worker_whose_trials_failed_exits_1(digits_seed, tmp_path):
    out = tmp_path / "study"
    res = invoke(
        *_tune_args(digits_seed, out, "--trials", "1", "--set", "tune.epochs=[1, 1]",
                    "--set", "compress.finetune.lr=1e30")
    )  # fmt: skip
    assert res.exit_code == 1, res.output
    (trial,) = read_tune(out / "tune.json").trials
    assert trial.state == "FAIL" and "compress.finetune.lr" in trial.fail_reason
    # The same record read by a worker's own accounting: its host's FAIL trials, with reasons.
    study = optuna.load_study(study_name="edgepack-tune", storage=f"sqlite:///{out / 'study.db'}")
    host = study.trials[0].user_attrs["host"]
    (line,) = _failures_of(study, host)
    assert line.startswith("trial 0: ") and "compress.finetune.lr" in line
    assert _failures_of(study, "elsewhere:1") == []
    assert not TuneResult({}, None, [line]).passed and TuneResult({}, None, []).passed


def test_a_recipe_proposed_again_is_not_run_again(digits_seed, tmp_path):
    out = tmp_path / "study"
    # One point in the space: every trial after the first is the same recipe.
    res = invoke(
        *_tune_args(digits_seed, out, "--trials", "3", "--set",
                    'tune.params=["compress.prune.sparsity"]', "--set", "tune.sparsity=[0.5, 0.5]",
                    "--set", "compress.finetune.epochs=1")
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    first, *again = read_tune(out / "tune.json").trials
    assert first.repeat_of is None and first.wall_s > 1.0
    assert [t.repeat_of for t in again] == [0, 0]
    assert all(t.tuning == first.tuning and t.overrides == first.overrides for t in again)
    assert all(t.wall_s == 0.0 for t in again)


def _finished(db) -> list[optuna.trial.FrozenTrial]:
    try:
        study = optuna.load_study(study_name="edgepack-tune", storage=f"sqlite:///{db}")
    except (KeyError, sqlalchemy.exc.SQLAlchemyError):  # the file exists, the study not yet
        return []
    return [t for t in study.get_trials() if t.state.is_finished()]


def _completed_trials(db: Path) -> int:
    """Trials COMPLETE in a study another process is writing, read without Optuna: opening an
    RDBStorage creates its tables, which would race with the process creating them."""
    if not db.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            return con.execute("SELECT count(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
    except sqlite3.Error:  # the tables are not there yet, or the file is being created
        return 0


@pytest.mark.slow
def test_resume_after_ctrl_c(digits_seed, tmp_path):
    out = tmp_path / "study"
    args = _tune_args(digits_seed, out, "--trials", "3")
    proc = subprocess.Popen([str(EDGEPACK), *map(str, args)], stderr=subprocess.PIPE, text=True)
    # Generous: on 2 shared cores one trial has taken from 10 s to several minutes.
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
        if _completed_trials(out / "study.db"):
            break
    assert proc.poll() is None, (
        f"the study ended before it could be interrupted: {proc.communicate()[1]}"
    )
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("error: interrupted")
    assert not (out / "tune.json").exists()
    before = {t.number: t.values for t in _finished(out / "study.db") if t.values}
    assert before

    res = invoke(*args)
    assert res.exit_code in (0, 1), res.output
    trials = read_tune(out / "tune.json").trials
    numbers = [t.number for t in trials]
    assert numbers == list(range(len(numbers)))  # no duplicate, none lost
    assert len([t for t in trials if t.state in ("COMPLETE", "PRUNED", "FAIL")]) >= 3
    assert all(t.state != "RUNNING" for t in trials)
    resumed = {t.number: t for t in trials}
    for number, values in before.items():
        f = resumed[number].tuning
        assert [f.accuracy, f.objective] == values
