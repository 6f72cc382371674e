"""runtime_check: validate exported models on the device they will run on.

Imports numpy and, optionally, onnxruntime / ai-edge-litert / tflite_runtime — never torch
or the exporter — so the same code runs on this machine, under QEMU and over SSH.
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path

__version__ = "0.1.0"


def check(
    artifacts: list[str | Path],
    batch: str | Path,
    *,
    threads: int = 1,
    warmup: int = 10,
    runs: int = 100,
    delegate: str = "xnnpack",
    isolate: bool = True,
    layouts: list[str | None] | None = None,
    runtime: str | None = None,
) -> dict:
    """Validate each artifact on the eval batch and return one JSON-ready result.

    ``layouts`` is the input layout hint (``nchw`` / ``nhwc`` / None) of each artifact, in
    order: a field of its own, never read from the path, which may hold any character.
    """
    from runtime_check.cpu import describe_cpu
    from runtime_check.evaluate import evaluate_artifact, evaluate_isolated, load_batch
    from runtime_check.runtimes import runtime_versions

    data = load_batch(batch)
    run_one = evaluate_isolated if isolate else evaluate_artifact
    layouts = list(layouts) if layouts is not None else [None] * len(artifacts)
    if len(layouts) != len(artifacts):
        raise ValueError(f"{len(layouts)} layouts for {len(artifacts)} artifacts")
    results = [
        run_one(
            a,
            data,
            threads=threads,
            warmup=warmup,
            runs=runs,
            delegate=delegate,
            layout=layout,
            runtime=runtime,
        )
        for a, layout in zip(artifacts, layouts)  # noqa: B905 (python 3.8 on devices)
    ]
    return {
        "runtime_check_version": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": describe_cpu(),
        "runtimes": runtime_versions(),
        "settings": {
            "threads": threads,
            "warmup": warmup,
            "runs": runs,
            "delegate": delegate,
            **({"runtime": runtime} if runtime else {}),
        },
        "results": results,
    }
