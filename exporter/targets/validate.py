"""Validation stage: run runtime_check on a target through its runner, merge the results."""

from __future__ import annotations

import dataclasses
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
# Operators named in a one-line error ("#3 CONV_2D 'relu_1'": index, op, output tensor).
_MAX_NODES_SHOWN = 8


def _nodes(ops: list) -> str:
    shown = ", ".join(f"#{o.index} {o.op} '{o.output}'" for o in ops[:_MAX_NODES_SHOWN])
    more = len(ops) - _MAX_NODES_SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


def check_tflm_ops(out_dir: Path, artifacts: list[Artifact], recipe: Recipe) -> None:
    """Before anything runs on a TFLM target: every operator of every int8 model must be
    integer and have a TFLM kernel, else one line naming the nodes and the target.

    TFLM itself is asked which operator it lacks (its allocation names the first one); a
    float operator is one reading or writing float32 tensors other than the QUANTIZE /
    DEQUANTIZE of a float model input or output.
    """
    from runtime_check.runtimes import ArtifactError, RuntimeUnavailable
    from runtime_check.tflm import float_operators, model_operators, unsupported_op

    int8 = [a for a in artifacts if a.format == "tflite" and a.precision == "int8"]
    if not int8:
        have = ", ".join(a.path for a in artifacts) or "none"
        raise RuntimeCheckError(
            f"target '{recipe.name}' runs int8 .tflite models under TFLM and this output has "
            f"none ({have}): export one with `edgepack run ... --target {recipe.name}`"
        )
    for art in int8:
        model = (out_dir / art.path).read_bytes()
        try:
            ops = model_operators(model)
            missing = unsupported_op(model)
        except (ArtifactError, RuntimeUnavailable) as exc:
            raise RuntimeCheckError(f"{art.path}: {exc}") from None
        floats = float_operators(ops)
        if floats:
            raise RuntimeCheckError(
                f"{art.path}: {len(floats)} operator(s) left in float, which target "
                f"'{recipe.name}' (TFLM, int8 kernels) cannot run: {_nodes(floats)} "
                "(set quantize.max_float_layers = 0, or quantize these layers)"
            )
        if missing:
            users = [o for o in ops if o.op == missing]
            raise RuntimeCheckError(
                f"{art.path}: TFLM has no kernel for {missing}, so target '{recipe.name}' "
                f"cannot run {_nodes(users)}"
            )


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
    if dev.kind == "tflm":
        from runtime_check.tflm import tflm_version

        if tflm_version() is None:
            raise RuntimeCheckError(
                f"target '{recipe.name}' validates under TensorFlow Lite Micro: "
                "pip install tflite-micro"
            )
        return LocalRunner()
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
    """runtime_check's JSON for every artifact: one runner call for all of them, or one per
    artifact where the runner asks for it (QEMU: reproducible instruction counts)."""
    rt = recipe.runtime
    tflm = recipe.device.kind == "tflm"
    options = CheckOptions(
        threads=rt.threads,
        warmup=rt.warmup,
        runs=rt.runs,
        delegate=rt.delegate,
        timeout_s=recipe.device.timeout_s,
        runtime="tflm" if tflm else None,
    )
    runner = runner or make_runner(recipe)
    if tflm:
        check_tflm_ops(out_dir, artifacts, recipe)
    merged: dict = {"runner": runner.name, "results": []}
    task = progress.add_task("validate", total=len(artifacts))
    rows: list[dict | None] = []
    to_run: list[Artifact] = []
    for art in artifacts:
        runtime = "tflm" if tflm else RUNTIME_OF_FORMAT[art.format]
        skip = None
        if runtime not in rt.runtimes:
            skip = f"{runtime} is not in the recipe's runtimes"
        elif tflm and (art.format != "tflite" or art.precision != "int8"):
            skip = "a TFLM target runs int8 .tflite models only"
        if skip:
            # The recipe's own choice, so it does not fail the verdict (``excluded``); the size
            # needs no runtime and is still judged.
            rows.append(
                {
                    "path": art.path,
                    "status": "skipped",
                    "reason": skip,
                    "excluded": True,
                    "bytes": (out_dir / art.path).stat().st_size,
                }
            )
            progress.update(task, advance=1)
        else:
            rows.append(None)
            to_run.append(art)
    groups = [[a] for a in to_run] if runner.one_artifact_per_call else [to_run] if to_run else []
    ran: list[dict] = []
    for group in groups:
        # One runner call for every artifact where the runner allows it: one interpreter start,
        # one copy to the device, the eval batch read and decoded once and shared (each
        # artifact still runs in its own child process, so its memory figures are its own).
        # The time limit stays per artifact.
        names = ", ".join(a.path for a in group)
        progress.update(task, description=f"validate {names} ({runner.name})")
        opts = dataclasses.replace(options, timeout_s=options.timeout_s * len(group))
        try:
            res = runner.run([out_dir / a.path for a in group], batch or out_dir / EVAL_BATCH, opts)
        except RunnerError as exc:
            raise RuntimeCheckError(str(exc)) from None
        got = res.get("results", [])
        if len(got) != len(group):
            raise RuntimeCheckError(
                f"runtime_check returned {len(got)} results for {len(group)} artifacts"
            )
        merged.update({k: v for k, v in res.items() if k != "results"})
        ran.extend(got)
        progress.update(task, advance=len(group))
    results = iter(ran)
    rows = [row if row is not None else next(results) for row in rows]
    merged["results"] = rows
    return merged
