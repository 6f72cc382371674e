"""The Optuna study: storage (SQLite beside the outputs, or any RDB URL shared by many
machines), its identity (what was tuned), the sampler, and the budgets as constraints.

Everything a worker needs is in the study itself (``user_attrs``): a worker is given only the
storage URL and the study name.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import optuna

from exporter.errors import EdgepackError
from exporter.recipe import TuneSpec

# Heartbeats, constraints and retries are "experimental" in Optuna 4 (stable for years); its
# per-call warnings and INFO lines would drown the progress lines.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.WARNING)

CONFIG_ATTR = "edgepack_config"
# The keys that say what a study tunes: another value in any of them is another study.
IDENTITY = (
    "model",
    "weights",
    "data",
    "eval_data",
    "target",
    "objective",
    "overrides",
    "search_space",
)
DB_NAME = "study.db"


class TuneError(EdgepackError):
    """The study cannot be opened, or it tunes something else."""


def default_url(out: Path) -> str:
    return f"sqlite:///{(out / DB_NAME).resolve()}"


def redact(url: str) -> str:
    """The URL without its password, for messages and tune.json."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def open_storage(url: str, heartbeat_s: float) -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats: a trial whose process stops beating for two intervals
    is marked FAIL by the next process that starts a trial, and retried once."""
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    interval = max(1, math.ceil(heartbeat_s))
    engine: dict[str, Any] = {}
    if url.startswith("postgresql"):
        # An unreachable host is one line after 10 s, not a hang.
        engine["connect_args"] = {"connect_timeout": 10}
    try:
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine,
            heartbeat_interval=interval,
            grace_period=2 * interval,
            failed_trial_callback=optuna.storages.RetryFailedTrialCallback(max_retry=1),
        )
    except (SQLAlchemyError, ArgumentError, ImportError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TuneError(f"--storage {redact(url)}: cannot be reached ({first})") from None


def make_sampler(spec: TuneSpec, seed: int | None, n_budgets: int) -> optuna.samplers.BaseSampler:
    """The [tune] sampler, with the target's ``n_budgets`` budgets as Optuna constraints."""

    def constraints(trial: optuna.trial.FrozenTrial) -> list[float]:
        # Feasible when every value is <= 0; a trial stopped before it was measured is not.
        return list(trial.user_attrs.get("constraints") or [1.0] * n_budgets)

    if spec.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(
            population_size=max(4, spec.startup_trials), seed=seed, constraints_func=constraints
        )
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(
        n_startup_trials=spec.startup_trials,
        multivariate=True,
        seed=seed,
        constraints_func=constraints,
    )


def find_study(storage: optuna.storages.BaseStorage, name: str) -> bool:
    return any(s.study_name == name for s in optuna.get_all_study_summaries(storage))


def _mismatch(old: dict, new: dict) -> str | None:
    for key in IDENTITY:
        if old.get(key) == new.get(key):
            continue
        if key == "search_space":
            before = old.get(key) or "an older edgepack's"
            return f"the search space {before} (this run: {new.get(key)})"
        return f"--{key.replace('_', '-')} {old.get(key)!r} (this run: {new.get(key)!r})"
    return None


def create_or_join(
    storage: optuna.storages.BaseStorage,
    name: str,
    config: dict,
    sampler: optuna.samplers.BaseSampler,
    url: str,
) -> optuna.Study:
    """Start the study or join it; a study of another model, data or target is refused."""
    if find_study(storage, name):
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
        old = study.user_attrs.get(CONFIG_ATTR)
        if old is None:
            raise TuneError(f"study '{name}' in {redact(url)} was not made by edgepack tune")
        differs = _mismatch(old, config)
        if differs:
            raise TuneError(
                f"study '{name}' in {redact(url)} tunes another setup: it was started with "
                f"{differs}; pick another --study or --out"
            )
        # A resumed study may be given more trials or time: workers read them from here.
        study.set_user_attr(CONFIG_ATTR, config)
        return study
    study = optuna.create_study(
        study_name=name, storage=storage, sampler=sampler, directions=["maximize", "minimize"]
    )
    study.set_user_attr(CONFIG_ATTR, config)
    return study


def join_as_worker(
    storage: optuna.storages.BaseStorage, name: str, url: str, recipe_of
) -> tuple[optuna.Study, dict]:
    """A worker's study: its setup comes from the study; ``recipe_of(config)`` gives the
    recipe whose [tune] section and budgets the sampler is made from."""
    if not find_study(storage, name):
        raise TuneError(f"no study '{name}' in {redact(url)}: start it without --worker first")
    probe = optuna.load_study(study_name=name, storage=storage)
    config = probe.user_attrs.get(CONFIG_ATTR)
    if config is None:
        raise TuneError(f"study '{name}' in {redact(url)} was not made by edgepack tune")
    recipe = recipe_of(config)
    n_budgets = len([v for v in vars(recipe.budgets).values() if v is not None])
    sampler = make_sampler(recipe.tune, seed=None, n_budgets=n_budgets)
    return optuna.load_study(study_name=name, storage=storage, sampler=sampler), config
