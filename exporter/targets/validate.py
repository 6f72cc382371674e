"""Validation stage: run runtime_check on a target through its runner, merge the results."""

from __future__ import annotations

from pathlib import Path

from exporter.artifacts import Artifact
from exporter.common.progress import Progress
from exporter.errors import RuntimeCheckError
from exporter.outdir import EVAL_BATCH
from exporter.recipe import Recipe
from runtime_check.qemu import QemuRunner
from runtime_check.runners import CheckOptions, LocalRunner, Runner, RunnerError
from runtime_check.ssh import SshRunner

RUNTIME_OF_FORMAT = {"onnx": "onnxruntime", "tflite": "litert"}


def make_runner(recipe: Recipe, host: str | None = None) -> Runner:
    """The runner for the recipe's device kind; ``--host`` (or an ssh kind) means SSH."""
    dev = recipe.device
    if host is not None or dev.kind == "ssh":
        target = host or dev.host
        if not target:
            raise RuntimeCheckError(
                f"target '{recipe.name}' runs over SSH: give --host "
                "user@host[:port] (or set device.host in the recipe)"
            )
        try:
            return SshRunner(
                target,
                python=dev.python,
                ssh_options=list(dev.ssh_options),
                connect_timeout_s=dev.connect_timeout_s,
            )
        except RunnerError as exc:
            raise RuntimeCheckError(str(exc)) from None
    if dev.kind == "qemu":
        from exporter.targets.sysroot import find_qemu, require

        qemu, version = find_qemu()
        sr = require("arm64")
        # The cpu was checked against CPU_MODELS when the recipe was loaded.
        return QemuRunner(
            qemu=qemu,
            sysroot=sr.sysroot,
            views_dir=sr.views,
            cpu=dev.cpu or "",
            plugin=sr.plugin,
            qemu_version=version,
        )
    return LocalRunner()


def validate(
    out_dir: Path,
    artifacts: list[Artifact],
    recipe: Recipe,
    progress: Progress,
    runner: Runner | None = None,
    batch: Path | None = None,
) -> dict:
    """runtime_check's JSON for every artifact, one runner call per artifact for progress."""
    rt = recipe.runtime
    options = CheckOptions(
        threads=rt.threads,
        warmup=rt.warmup,
        runs=rt.runs,
        delegate=rt.delegate,
        timeout_s=recipe.device.timeout_s,
    )
    runner = runner or make_runner(recipe)
    merged: dict = {"runner": runner.name, "results": []}
    task = progress.add_task("validate", total=len(artifacts))
    for art in artifacts:
        progress.update(task, description=f"validate {art.path} ({runner.name})")
        runtime = RUNTIME_OF_FORMAT[art.format]
        if runtime not in rt.runtimes:
            # The recipe's own choice, so it does not fail the verdict (``excluded``); the size
            # needs no runtime and is still judged.
            merged["results"].append(
                {
                    "path": art.path,
                    "status": "skipped",
                    "reason": f"{runtime} is not in the recipe's runtimes",
                    "excluded": True,
                    "bytes": (out_dir / art.path).stat().st_size,
                }
            )
        else:
            try:
                res = runner.run([out_dir / art.path], batch or out_dir / EVAL_BATCH, options)
            except RunnerError as exc:
                raise RuntimeCheckError(str(exc)) from None
            merged.update({k: v for k, v in res.items() if k != "results"})
            merged["results"].extend(res["results"])
        progress.update(task, advance=1)
    return merged
