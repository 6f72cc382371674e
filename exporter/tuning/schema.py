"""tune.json as dataclasses (typed like report.json: exporter.common.typed_json)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter.common.atomic import atomic_write_text
from exporter.common.typed_json import doc, from_json, to_json

TUNE_SCHEMA_VERSION = 1


@dataclass
class Figures:
    """One artifact's figures, from the report of the run that validated it."""

    artifact: str = doc("artifact file name")
    accuracy: float | None = doc("top-1, percent")
    accuracy_drop: float | None = doc("points below the original model on the same images")
    bytes: int | None = doc("file size")
    latency_p50_ms: float | None = doc("batch-1 p50, ms", default=None)
    latency_p90_ms: float | None = doc("batch-1 p90, ms", default=None)
    instructions: float | None = doc("QEMU guest instructions per inference", default=None)
    objective: float | None = doc("the figure minimized", default=None)


@dataclass
class TrialRecord:
    number: int = doc("Optuna trial number (unique in the study)")
    state: str = doc("COMPLETE, PRUNED, FAIL, RUNNING or WAITING")
    params: dict[str, Any] = doc("the drawn knobs")
    overrides: list[str] = doc("the trial's recipe as --set overrides on the target")
    host: str | None = doc("host:pid of the process that ran it")
    wall_s: float | None = doc("wall time of the trial")
    tuning: Figures | None = doc("figures on the tuning split (COMPLETE trials)")
    feasible: bool | None = doc("every budget holds on the tuning split")
    constraints: list[float] = doc("Optuna constraint values, one per budget (<= 0 holds)")
    first_epoch_drop: float | None = doc("tuning drop after the first fine-tune epoch")
    retry_of: int | None = doc("a retried trial: the number of the trial that failed")
    repeat_of: int | None = doc(
        "the sampler proposed an earlier trial's recipe again: that trial's figures, not re-run",
        default=None,
    )
    fail_reason: str | None = doc(
        "a FAIL trial's error, as its process saw it (null for one whose process died)",
        default=None,
    )


@dataclass
class FrontMember:
    trial: int = doc("trial number")
    recipe: str = doc("the recipe file written for it (extends the target)")
    tuning: Figures = doc("figures on the tuning split (the search's view)")
    eval: Figures | None = doc("the same artifact rebuilt and validated on the eval data, once")
    eval_passed: bool = doc("the artifact holds every budget on the eval data")
    fp32_tflite_bytes: int | None = doc("model.fp32.tflite of the same run, for the ratio")


@dataclass
class TuneReport:
    schema_version: int = doc(f"{TUNE_SCHEMA_VERSION} (this layout)")
    study: str = doc("Optuna study name")
    storage: str = doc("storage URL, password hidden")
    objective: str = doc("`size`, `latency` or `instructions`")
    directions: list[str] = doc("Optuna directions: accuracy, then the objective")
    sampler: str = doc("the [tune] sampler")
    target: str = doc("--target")
    model: str = doc("--model")
    weights: str | None = doc("--weights")
    data: str = doc("--data")
    tuning_split: str = doc("where trials were scored, in words")
    reference_tuning_accuracy: float | None = doc("the original model on the tuning split")
    budgets: dict[str, Any] = doc("the target's budgets, the study's constraints")
    trials: list[TrialRecord] = doc("every trial of the study")
    front: list[FrontMember] = doc("the feasible Pareto front (tuning split), validated")
    chosen: int | None = doc("trial number of best.toml / best/, null when none holds")
    chosen_note: str = doc("why that one")
    best: Figures | None = doc(
        "the chosen artifact in best/ (`edgepack run --target best.toml`): on the eval images "
        "the front was validated on, unless there are no more eval images than eval.samples "
        "(then on all of them, tuning split included)"
    )
    wall_s: float = doc("wall time of this invocation")
    edgepack_version: str = doc("the edgepack that wrote it")
    best_passed: bool | None = doc(
        "best/'s own verdict (its report's `passed`); false makes the study fail (exit 1)",
        default=None,
    )
    search_stop: str | None = doc(
        "why the search ended before --trials and --timeout: the time left was needed to "
        "rebuild the front and write best/ (--timeout bounds the whole invocation)",
        default=None,
    )


def write_tune(report: TuneReport, path: Path) -> None:
    atomic_write_text(path, json.dumps(to_json(report), indent=2) + "\n")


def read_tune(path: Path) -> TuneReport:
    return from_json(TuneReport, json.loads(path.read_text()), "tune")
