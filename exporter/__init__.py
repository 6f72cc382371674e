"""edgepack: compress a PyTorch CNN, export ONNX and TFLite, validate every artifact.

The Python API mirrors the CLI::

    import exporter
    result = exporter.run(model="seed-cnn", weights="seed.pt", data="digits", out="dist/seed")
    result.report["passed"], result.report["artifacts"]
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from exporter.pipeline import RunResult


def run(
    model: str,
    out: str | Path,
    *,
    weights: str | None = None,
    data: str = "digits",
    eval_data: str | None = None,
    target: str = "x86_64",
    overrides: tuple[str, ...] = (),
    force: bool = False,
    quiet: bool = True,
) -> RunResult:
    """``edgepack run`` as a function: returns the same report the CLI writes."""
    from exporter.pipeline import RunOptions
    from exporter.pipeline import run as run_pipeline

    return run_pipeline(
        RunOptions(
            model=model,
            out=Path(out),
            weights=weights,
            data=data,
            eval_data=eval_data,
            target=target,
            overrides=tuple(overrides),
            force=force,
            quiet=quiet,
        )
    )
