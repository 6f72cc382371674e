"""Validation stage: run runtime_check on a target through its runner, merge the results."""

from __future__ import annotations

from pathlib import Path

from exporter.artifacts import Artifact
from exporter.errors import RuntimeCheckError
from exporter.progress import Progress
from exporter.recipe import Recipe
from runtime_check.runners import CheckOptions, LocalRunner, Runner, RunnerError

EVAL_BATCH = "eval_batch.npz"
RUNTIME_OF_FORMAT = {"onnx": "onnxruntime", "tflite": "litert"}


def make_runner(recipe: Recipe, host: str | None = None) -> Runner:
    """The runner for the recipe's device kind (``--host`` overrides the recipe's host)."""
    kind = recipe.device.kind
    if kind == "local" and host is None:
        return LocalRunner()
    raise RuntimeCheckError(f"target '{recipe.name}': device kind '{kind}' is not available in "
                            "this version of edgepack")


def validate(out_dir: Path, artifacts: list[Artifact], recipe: Recipe, progress: Progress,
             runner: Runner | None = None) -> dict:
    """runtime_check's JSON for every artifact, one runner call per artifact for progress."""
    rt = recipe.runtime
    options = CheckOptions(threads=rt.threads, warmup=rt.warmup, runs=rt.runs,
                           delegate=rt.delegate)
    runner = runner or make_runner(recipe)
    merged: dict = {"runner": runner.name, "results": []}
    task = progress.add_task("validate", total=len(artifacts))
    for art in artifacts:
        progress.update(task, description=f"validate {art.path} ({runner.name})")
        runtime = RUNTIME_OF_FORMAT[art.format]
        if runtime not in rt.runtimes:
            merged["results"].append({"path": art.path, "status": "skipped",
                                      "reason": f"{runtime} is not in the recipe's runtimes"})
        else:
            try:
                res = runner.run([out_dir / art.path], out_dir / EVAL_BATCH, options)
            except RunnerError as exc:
                raise RuntimeCheckError(str(exc)) from None
            merged.update({k: v for k, v in res.items() if k != "results"})
            merged["results"].extend(res["results"])
        progress.update(task, advance=1)
    return merged
