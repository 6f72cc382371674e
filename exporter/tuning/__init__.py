"""`edgepack tune`: an Optuna study over recipe knobs against a target's budgets.

Each trial is a recipe (the target plus ``--set`` overrides drawn from the ``[tune]`` section),
run through the pipeline on a tuning split carved from ``--data``; accuracy is maximized and
bytes / p50 latency / QEMU instructions minimized, with the target's budgets as Optuna
constraints. The feasible Pareto front is rebuilt from its recipes and validated on the eval
data once; the chosen trial becomes ``best.toml`` and ``best/``. The study lives in any Optuna
RDB storage (SQLite in ``--out`` by default; PostgreSQL for many machines), so a rerun resumes
it and workers join it with only its URL and name.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from exporter.errors import EdgepackError

__all__ = ["TuneOptions", "TuneResult", "tune"]

MARKER = ".edgepack-tune"
DEFAULT_STUDY = "edgepack-tune"


@dataclass(frozen=True)
class TuneOptions:
    model: str | None = None
    out: Path | None = None
    weights: str | None = None
    data: str = "digits"
    eval_data: str | None = None
    target: str = "x86_64"
    objective: str = "size"
    trials: int = 20
    timeout_s: float | None = None
    jobs: int = 1
    storage: str | None = None
    study: str | None = None
    worker: bool = False
    worker_index: int = 0
    overrides: tuple[str, ...] = ()
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    quiet: bool = False


@dataclass
class TuneResult:
    report: dict  # tune.json as written (exporter.tuning.schema.TuneReport); {} for a worker
    out: Path | None
    # A worker: "trial N: reason" for each trial it ran that failed (the study goes on, but
    # the worker's exit code says its machine could not run them).
    worker_failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        if not self.report:
            return not self.worker_failures
        return self.report.get("chosen") is not None and self.report.get("best_passed") is not False


def _failures_of(study, host: str) -> list[str]:
    import optuna

    mine = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))
    return [f"trial {t.number}: {t.user_attrs.get('fail_reason', 'no reason recorded')}"
            for t in mine if t.user_attrs.get("host") == host]  # fmt: skip


def _absolute(spec: str | None) -> str | None:
    """A data spec with an absolute path: a worker on another directory or machine reads the
    same files (each machine holds them at the same paths)."""
    if spec is None:
        return None
    kind, sep, arg = spec.partition(":")
    return f"{kind}:{Path(arg).resolve()}" if sep and arg else spec


def _config(opts: TuneOptions) -> dict:
    from exporter.inputs.paths import model_file

    model = opts.model
    path = model_file(model)
    if path is not None:
        model = model.replace(str(path), str(path.resolve()), 1)
    target = opts.target
    from exporter.recipe import is_recipe_path

    if is_recipe_path(target):
        target = str(Path(target).resolve())
    return {
        "model": model,
        "weights": str(Path(opts.weights).resolve()) if opts.weights else None,
        "data": _absolute(opts.data),
        "eval_data": _absolute(opts.eval_data),
        "target": target,
        "objective": opts.objective,
        "overrides": list(opts.overrides),
        "mean": list(opts.mean) if opts.mean else None,
        "std": list(opts.std) if opts.std else None,
        "trials": opts.trials,
        "timeout_s": opts.timeout_s,
    }


def _check_objective(objective: str, recipe) -> None:
    from exporter.tuning.space import FIXED_ON_TFLM, OBJECTIVES
    from exporter.tuning.study import TuneError

    if objective not in OBJECTIVES:
        raise TuneError(f"--objective {objective!r}: unknown (one of: {', '.join(OBJECTIVES)})")
    kind = recipe.device.kind
    fixed = [k for k in recipe.tune.params if kind == "tflm" and k in FIXED_ON_TFLM]
    if fixed:
        raise TuneError(
            f"tune.params: {', '.join(fixed)} cannot vary on {recipe.name}: a microcontroller "
            "target runs one dense full-int8 model"
        )
    if objective == "instructions" and kind != "qemu":
        raise TuneError(
            f"--objective instructions needs a qemu target (instructions are counted under "
            f"QEMU); {recipe.name} is a {kind} target"
        )
    if objective == "latency" and kind in ("qemu", "tflm"):
        why = "emulated latency is never judged" if kind == "qemu" else "TFLM reports no latency"
        raise TuneError(
            f"--objective latency on {recipe.name}: {why}; use --objective "
            f"{'instructions' if kind == 'qemu' else 'size'}"
        )


def _check_options(opts: TuneOptions) -> None:
    from exporter.tuning.study import TuneError

    if not opts.worker and (opts.model is None or opts.out is None):
        raise TuneError("--model and --out are needed (only a --worker takes neither)")
    if opts.worker and not (opts.storage and opts.study):
        raise TuneError("--worker needs --storage and --study (the study it joins)")
    if opts.storage and not opts.study:
        raise TuneError("--storage needs --study (the study's name in that storage)")
    if opts.trials < 1 or opts.jobs < 1:
        raise TuneError("--trials and --jobs must be at least 1")
    if opts.timeout_s is not None and opts.timeout_s <= 0:
        raise TuneError("--timeout must be positive")


def _check_out(out: Path, config: dict, target_source: str) -> bool:
    """Refuse an --out that is an input or holds something that is not a tune study; returns
    whether it already exists (a resumed study)."""
    from exporter.common.out_path import check_out_path
    from exporter.inputs.paths import input_paths
    from exporter.tuning.study import TuneError

    inputs = input_paths(config["model"], config["data"], config["eval_data"], config["weights"])
    check_out_path(out, [*inputs, ("--target", Path(target_source))])
    if not out.exists():
        return False
    if not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).is_file()):
        raise TuneError(
            f"--out {out} exists and is not an edgepack tune directory; choose another --out"
        )
    return True


def _spawn_workers(opts: TuneOptions, url: str, name: str) -> list[subprocess.Popen]:
    """--jobs K: K-1 worker processes on this machine, each joining the study as any other
    machine would."""
    procs = []
    for i in range(1, opts.jobs):
        cmd = [
            sys.executable,
            "-c",
            "from exporter.cli import main; main()",
            "tune",
            "--worker",
            "--storage",
            url,
            "--study",
            name,
            "--worker-index",
            str(i),
            "-q",
        ]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL))
    return procs


def _optimize(study, objective, config: dict, deadline, progress) -> None:
    import optuna

    from exporter.common import interrupt
    from exporter.tuning.study import TuneError

    states = (
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.PRUNED,
        optuna.trial.TrialState.FAIL,
    )
    done = len(study.get_trials(deepcopy=False, states=states))
    if done >= config["trials"]:
        return
    left = deadline.remaining()
    if left is not None and left <= 0:
        return
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(
        objective,
        timeout=left,
        # The checkpoint ends the study after a trial when a Ctrl-C's exception was lost.
        callbacks=[
            optuna.study.MaxTrialsCallback(config["trials"], states=states),
            progress,
            deadline,
            lambda _study, _trial: interrupt.checkpoint(),
        ],
        # A recipe no model can take (or a diverged fine-tune) fails its trial, not the study.
        catch=(EdgepackError, TuneError),
    )


def _wait_for_running(study, heartbeat_s: float, limit_s: float) -> None:
    """Other processes' trials end (or go stale and FAIL) before the front is computed."""
    import optuna

    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        optuna.storages.fail_stale_trials(study)
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        if not running:
            return
        time.sleep(min(1.0, heartbeat_s))


def tune(opts: TuneOptions) -> TuneResult:
    """Run (or join, or resume) a study; raises EdgepackError on bad input."""
    from exporter.recipe import load_recipe
    from exporter.tuning import study as st
    from exporter.tuning.deadline import Deadline
    from exporter.tuning.objective import Objective, budget_keys, prepare
    from exporter.tuning.progress import ProgressLine
    from exporter.tuning.space import describe

    _check_options(opts)
    start = time.monotonic()
    if opts.worker:
        storage = st.open_storage(opts.storage, 10.0)
        study, config = st.join_as_worker(
            storage, opts.study, opts.storage, lambda c: load_recipe(c["target"], c["overrides"])
        )
        recipe = load_recipe(config["target"], config["overrides"])
        if recipe.tune.heartbeat_s != 10.0:  # the study's heartbeat, known once it is read
            storage = st.open_storage(opts.storage, recipe.tune.heartbeat_s)
            study, config = st.join_as_worker(storage, opts.study, opts.storage, lambda c: recipe)
        with tempfile.TemporaryDirectory(prefix="edgepack-tune-") as tmp:
            prepared = prepare(config, recipe, Path(tmp))
            progress = ProgressLine(config, recipe, start, opts.quiet)
            deadline = Deadline(config["timeout_s"], start, recipe.tune.front_max)
            objective = Objective(config, recipe, prepared, Path(tmp))
            _optimize(study, objective, config, deadline, progress)
        return TuneResult({}, None, _failures_of(study, objective.host))

    recipe = load_recipe(opts.target, opts.overrides)
    _check_objective(opts.objective, recipe)
    config = _config(opts)
    config["search_space"] = describe(recipe.tune, opts.objective, recipe.device.kind)
    out = Path(opts.out)
    existed = _check_out(out, config, recipe.source)
    name = opts.study or DEFAULT_STUDY
    n_budgets = len(budget_keys(recipe))
    sampler = st.make_sampler(recipe.tune, recipe.tune.seed + opts.worker_index, n_budgets)
    with tempfile.TemporaryDirectory(prefix="edgepack-tune-") as tmp:
        # Data and model are checked (one-line errors) before the study or --out exist.
        prepared = prepare(config, recipe, Path(tmp))
        url = opts.storage
        if url:
            storage = st.open_storage(url, recipe.tune.heartbeat_s)
            study = st.create_or_join(storage, name, config, sampler, url)
        out.mkdir(parents=True, exist_ok=True)
        (out / MARKER).write_text("edgepack tune\n")
        try:
            if not url:
                url = st.default_url(out)
                storage = st.open_storage(url, recipe.tune.heartbeat_s)
                study = st.create_or_join(storage, name, config, sampler, url)
        except EdgepackError:
            if not existed:
                shutil.rmtree(out, ignore_errors=True)
            raise
        from exporter.common.output_lock import output_lock

        with output_lock(out):
            procs = _spawn_workers(opts, url, name)
            try:
                progress = ProgressLine(config, recipe, start, opts.quiet)
                deadline = Deadline(opts.timeout_s, start, recipe.tune.front_max, progress.say)
                objective = Objective(config, recipe, prepared, Path(tmp))
                _optimize(study, objective, config, deadline, progress)
                for p in procs:
                    p.wait()
            finally:
                for p in procs:
                    if p.poll() is None:
                        p.terminate()
                        p.wait()
            _wait_for_running(study, recipe.tune.heartbeat_s, limit_s=3600.0)
            from exporter.tuning.outputs import write_outputs

            report = write_outputs(
                study,
                config,
                recipe,
                prepared,
                out,
                name,
                url,
                start,
                opts.quiet,
                deadline.reason,
            )
    return TuneResult(report, out)
