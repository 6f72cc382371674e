"""One trial: a recipe run through the pipeline on the tuning split, scored on one artifact.

Work all trials share is done once per process (:func:`prepare`): the data is loaded and split
once and written as two npz files (trials fine-tune on one and are validated on the other),
the normalization is resolved once and passed explicitly, and the original model's accuracy on
the tuning images is computed once for the first-epoch pruning rule.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna

from exporter.errors import EdgepackError
from exporter.inputs.data import Dataset, stratified_split
from exporter.inputs.prepare import (
    build_torch_model,
    eval_sample,
    resolve_normalization,
    split_data,
)
from exporter.pipeline import RunOptions, run
from exporter.recipe import Recipe
from exporter.training.loop import EPOCH_OBSERVER, accuracy, predict
from exporter.tuning.space import fixed_sets, suggest
from exporter.tuning.study import TuneError

# The figure each objective minimizes, read from a report row.
_FIGURE = {
    "size": lambda row: row.get("bytes"),
    "latency": lambda row: (row.get("latency_ms") or {}).get("p50"),
    "instructions": lambda row: row.get("instructions_per_inference"),
}


@dataclass
class Prepared:
    """What every trial of this process shares."""

    train_npz: Path  # the training split of --data, exactly what `edgepack run` trains on
    tune_npz: Path  # the tuning split: part of the eval images, never trained on
    final_npz: Path  # the other eval images: the front is validated on these, once
    mean: tuple[float, ...]
    std: tuple[float, ...]
    tune_x: np.ndarray  # normalized tuning images, for the pruning rule
    tune_y: np.ndarray
    reference_accuracy: float | None  # the original model on them (None: ONNX model)
    note: str  # the splits in words


def _save(ds: Dataset, path: Path) -> None:
    arrays = {"images": ds.images, "labels": ds.labels}
    if ds.named_classes:
        arrays["classes"] = np.asarray(ds.classes)
    np.savez(path, **arrays)


def prepare(config: dict, recipe: Recipe, workdir: Path) -> Prepared:
    """Load and split the data once; bad data or a model that does not fit it raises the
    pipeline's one-line errors here, before the study starts.

    Trials train on the training split `edgepack run` trains on (so a trial's recipe rebuilds
    its artifacts byte for byte) and are scored on a seeded, stratified part of the eval images
    (the hold-out of --data, or --eval-data) that `edgepack run` does not validate on; the
    front is validated on the very images `edgepack run` validates on, so best/ and a user's
    `edgepack run --target best.toml` judge the chosen artifact on the images it was chosen on.
    """
    spec = recipe.tune
    # Every eval image: the tuning split is carved out of those eval.samples leaves aside.
    whole = dataclasses.replace(recipe.eval, samples=2**62)
    full, splits = split_data(config["data"], config["eval_data"], whole)
    norm = resolve_normalization(full, config["mean"], config["std"], config["weights"])
    final, tune, where = _tuning_split(splits.eval, recipe)
    workdir.mkdir(parents=True, exist_ok=True)
    _save(splits.train, workdir / "train.npz")
    _save(tune, workdir / "tune-split.npz")
    _save(final, workdir / "final-eval.npz")
    loaded = build_torch_model(config["model"], config["weights"], full)
    tune_x = norm.apply(tune.images)
    reference = None
    if loaded.module is not None:
        import torch

        with torch.no_grad():
            reference = accuracy(predict(loaded.module, tune_x), tune.labels)
    note = (
        f"trials are scored on {len(tune)} of the {len(splits.eval)} eval images "
        f"({splits.eval_note}; stratified, seed {spec.seed}) and train on the {len(splits.train)} "
        f"training images `edgepack run` trains on; the front is validated once on {where}"
    )
    return Prepared(
        workdir / "train.npz",
        workdir / "tune-split.npz",
        workdir / "final-eval.npz",
        tuple(norm.mean),
        tuple(norm.std),
        tune_x,
        tune.labels,
        reference,
        note,
    )


def _tuning_split(evald: Dataset, recipe: Recipe) -> tuple[Dataset, Dataset, str]:
    """(front validation images, tuning split, where the front is validated, in words)."""
    spec, ev = recipe.tune, recipe.eval
    picked = eval_sample(len(evald), ev)
    if picked is None:
        # `edgepack run` validates on every eval image: the tuning split comes out of them.
        fraction = min(0.5, spec.samples / len(evald))
        final, tune = stratified_split(evald, fraction, spec.seed)
        return (
            final,
            tune,
            (
                f"the other {len(final)} eval images (best/, an `edgepack run` on all "
                f"{len(evald)}, also sees the tuning split: more eval images than eval.samples = "
                f"{ev.samples} keep the two apart)"
            ),
        )
    rest = np.ones(len(evald), bool)
    rest[picked] = False
    final = evald.subset(picked, evald.source)
    others = evald.subset(np.flatnonzero(rest), evald.source)
    tune = others
    if spec.samples < len(others):
        _, tune = stratified_split(others, spec.samples / len(others), spec.seed)
    return (
        final,
        tune,
        (
            f"the {len(final)} eval images `edgepack run` validates on (eval.samples = "
            f"{ev.samples}, seed {ev.seed}), which no trial saw; best/ is validated on them too"
        ),
    )


def pick(rows: list[dict], objective: str) -> dict | None:
    """The trial's candidate: the validated artifact with the best figure among those within
    every budget, else the best of all (the trial is then infeasible)."""
    fig = _FIGURE[objective]
    ok = [r for r in rows if r.get("status") == "ok" and fig(r) is not None]
    if not ok:
        return None
    feasible = [r for r in ok if all(b["ok"] for b in r.get("budgets", {}).values())]
    return min(feasible or ok, key=lambda r: (fig(r), -(r.get("accuracy") or 0.0)))


def budget_keys(recipe: Recipe) -> list[str]:
    """The recipe's budgets, in a fixed order: one Optuna constraint each, for every trial."""
    return [f.name for f in dataclasses.fields(recipe.budgets) if getattr(recipe.budgets, f.name)
            is not None]  # fmt: skip


def budget_constraints(row: dict, keys: list[str]) -> list[float]:
    """One value per budget, <= 0 when it holds (Optuna's convention). A budget that does not
    apply to the artifact (latency under QEMU) holds."""
    out = []
    for name in keys:
        check = row.get("budgets", {}).get(name)
        if check is None:
            out.append(0.0)
            continue
        signed = check["value"] - check["limit"]
        if name.startswith("min_"):
            signed = -signed
        # A drop within one eval image of the budget holds (the report's own rule).
        out.append(min(signed, 0.0) if check["ok"] else max(signed, 1e-9))
    return out


def metrics(row: dict, objective: str) -> dict:
    lat = row.get("latency_ms") or {}
    return {
        "artifact": row["path"],
        "accuracy": row.get("accuracy"),
        "accuracy_drop": row.get("accuracy_drop"),
        "bytes": row.get("bytes"),
        "latency_p50_ms": lat.get("p50"),
        "latency_p90_ms": lat.get("p90"),
        "instructions": row.get("instructions_per_inference"),
        "objective": _FIGURE[objective](row),
    }


def _same_recipe(trial: optuna.Trial, overrides: list[str]) -> optuna.trial.FrozenTrial | None:
    """A finished trial of the same recipe: samplers propose a point again (TPE did in 10 of 49
    trials of a MobileNetV2 study), and a trial is deterministic (seeded data, training
    and calibration), so its outcome is known without running it."""
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    for t in trial.study.get_trials(deepcopy=False, states=done):
        if t.user_attrs.get("overrides") == overrides and "repeat_of" not in t.user_attrs:
            return t
    return None


def _repeat(trial: optuna.Trial, earlier: optuna.trial.FrozenTrial) -> tuple[float, float]:
    """This trial's outcome is ``earlier``'s: recorded as a repeat, at no cost (the front
    keeps one of equal figures)."""
    trial.set_user_attr("repeat_of", earlier.number)
    trial.set_user_attr("wall_s", 0.0)
    for key in ("metrics", "constraints", "first_epoch_drop"):
        if key in earlier.user_attrs:
            trial.set_user_attr(key, earlier.user_attrs[key])
    if earlier.state == optuna.trial.TrialState.PRUNED:
        raise optuna.TrialPruned(f"the recipe of trial {earlier.number}, pruned")
    return float(earlier.values[0]), float(earlier.values[1])


class Objective:
    """The function Optuna calls: one trial, one pipeline run in a scratch directory."""

    def __init__(self, config: dict, recipe: Recipe, prepared: Prepared, workdir: Path):
        self.config, self.recipe, self.prep, self.workdir = config, recipe, prepared, workdir
        self.host = f"{socket.gethostname()}:{os.getpid()}"

    def _observer(self, trial: optuna.Trial):
        """Stops fine-tuning after its first epoch when the tuning-split drop is already
        ``tune.prune_margin`` points beyond the budget. (Optuna's pruners work from
        ``trial.report``, which multi-objective studies do not support; raising TrialPruned
        is how a multi-objective trial is pruned.)"""
        limit = self.recipe.budgets.max_accuracy_drop + self.recipe.tune.prune_margin
        seen = {"first": False}

        def observe(epoch: int, epochs: int, model) -> None:
            if seen["first"] or self.prep.reference_accuracy is None:
                return
            seen["first"] = True
            if epochs < 2:
                return
            import torch

            with torch.no_grad():
                acc = accuracy(predict(model, self.prep.tune_x), self.prep.tune_y)
            drop = self.prep.reference_accuracy - acc
            trial.set_user_attr("first_epoch_drop", round(drop, 4))
            if drop > limit:
                trial.set_user_attr("constraints", [1.0] * len(budget_keys(self.recipe)))
                raise optuna.TrialPruned(
                    f"after 1 of {epochs} fine-tune epochs the tuning drop is {drop:.2f} "
                    f"points (> {limit:g})"
                )

        return observe

    def __call__(self, trial: optuna.Trial) -> tuple[float, float]:
        cfg, spec = self.config, self.recipe.tune
        sets = suggest(trial, spec, cfg["objective"], self.recipe.device.kind)
        fixed = [
            f"export.formats={json.dumps(list(spec.formats))}",
            *fixed_sets(spec, cfg["objective"], self.recipe.device.kind, cfg["overrides"]),
        ]
        overrides = [*cfg["overrides"], *fixed, *sets]
        trial.set_user_attr("overrides", overrides)
        trial.set_user_attr("host", self.host)
        earlier = _same_recipe(trial, overrides)
        if earlier is not None:
            return _repeat(trial, earlier)
        out = self.workdir / f"trial-{trial.number:04d}"
        token = EPOCH_OBSERVER.set(self._observer(trial))
        start = time.monotonic()
        try:
            result = self._run(trial, out, overrides)
        finally:
            EPOCH_OBSERVER.reset(token)
            trial.set_user_attr("wall_s", round(time.monotonic() - start, 2))
            # Artifacts stay local and are not kept: the front is rebuilt from its recipes.
            shutil.rmtree(out, ignore_errors=True)
        row = pick(result.report["artifacts"], cfg["objective"])
        if row is None:
            err = TuneError(
                f"trial {trial.number}: no artifact was validated with a figure to rank"
            )
            raise self._failed(trial, err)
        m = metrics(row, cfg["objective"])
        trial.set_user_attr("metrics", m)
        trial.set_user_attr("constraints", budget_constraints(row, budget_keys(self.recipe)))
        return float(m["accuracy"]), float(m["objective"])

    @staticmethod
    def _failed(trial: optuna.Trial, err: Exception) -> Exception:
        """Optuna keeps no reason for a FAIL: the trial records its own (tune.json)."""
        trial.set_user_attr("fail_reason", str(err)[:500])
        return err

    def _run(self, trial: optuna.Trial, out: Path, overrides: list[str]):
        cfg = self.config
        try:
            return run(
                RunOptions(
                    model=cfg["model"],
                    out=out,
                    weights=cfg["weights"],
                    data=f"npz:{self.prep.train_npz}",
                    eval_data=f"npz:{self.prep.tune_npz}",
                    target=cfg["target"],
                    overrides=tuple(overrides),
                    mean=self.prep.mean,
                    std=self.prep.std,
                    force=True,
                    quiet=True,
                )
            )
        except EdgepackError as err:
            raise self._failed(trial, err) from None
