"""One study, three processes, a real PostgreSQL server: a coordinator and two `--worker`s;
one worker is killed with SIGKILL during a trial."""

from __future__ import annotations

import signal
import socket
import subprocess
import time

import optuna
import pytest

from exporter.tuning.schema import read_tune
from tests.exporter.tune.conftest import TINY
from tests.helpers import EDGEPACK


def _running_on(url: str, study: str, pid: int) -> list[int]:
    s = optuna.load_study(study_name=study, storage=url)
    host = f"{socket.gethostname()}:{pid}"
    return [
        t.number
        for t in s.get_trials(states=(optuna.trial.TrialState.RUNNING,))
        if t.user_attrs.get("host") == host
    ]


@pytest.mark.slow
def test_coordinator_and_two_workers_one_killed(digits_seed, postgres_url, tmp_path):
    out, name = tmp_path / "study", "seed-digits"
    coordinator = subprocess.Popen(
        [str(EDGEPACK), "tune", "--model", "seed-cnn", "--weights", str(digits_seed), "--data",
         "digits", "--objective", "size", "--trials", "4", "--out", str(out), "--storage",
         postgres_url, "--study", name, "-q", *TINY, "--set", "tune.heartbeat_s=1",
         "--set", "tune.front_max=1"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        summaries = optuna.get_all_study_summaries(postgres_url)
        if any(s.study_name == name for s in summaries):
            break
        time.sleep(0.5)
    worker = [str(EDGEPACK), "tune", "--worker", "--storage", postgres_url, "--study", name, "-q"]
    victim = subprocess.Popen(worker)
    survivor = subprocess.Popen(worker)
    killed: list[int] = []
    deadline = time.monotonic() + 240
    while not killed and time.monotonic() < deadline:
        time.sleep(0.3)
        killed = _running_on(postgres_url, name, victim.pid)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert killed, "the victim never ran a trial"
    _, err = coordinator.communicate(timeout=400)
    survivor.wait(timeout=120)
    assert coordinator.returncode in (0, 1), err
    assert survivor.returncode == 0  # its own trials completed

    trials = read_tune(out / "tune.json").trials
    numbers = [t.number for t in trials]
    assert numbers == list(range(len(numbers)))  # every trial recorded once
    states = {t.number: t.state for t in trials}
    assert states[killed[0]] == "FAIL"  # by the heartbeat, not by the dead process
    assert "RUNNING" not in states.values()
    hosts = {t.host for t in trials if t.state == "COMPLETE"}
    assert f"{socket.gethostname()}:{survivor.pid}" in hosts and len(hosts) >= 2
    assert len([s for s in states.values() if s in ("COMPLETE", "PRUNED")]) >= 3
    # Retried once: the failed trial's parameters are queued again.
    assert any(t.retry_of == killed[0] for t in trials)
