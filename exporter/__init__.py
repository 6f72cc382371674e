"""edgepack: compress a PyTorch CNN, export ONNX and TFLite, validate every artifact.

The Python API mirrors the CLI::

    import exporter
    result = exporter.run(model="seed-cnn", weights="seed.pt", data="digits", out="dist/seed")
    result.report["passed"], result.report["artifacts"]

    trained = exporter.train("seed-cnn", "seed.pt", data="digits", epochs=15)
    trained.eval_accuracy, trained.weights, trained.record
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from exporter.pipeline import RunResult
    from exporter.training.train_model import TrainResult
    from exporter.tuning import TuneResult


def run(
    model: str,
    out: str | Path,
    *,
    weights: str | None = None,
    data: str = "digits",
    eval_data: str | None = None,
    target: str = "x86_64",
    overrides: tuple[str, ...] = (),
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    force: bool = False,
    quiet: bool = True,
) -> RunResult:
    """``edgepack run`` as a function: returns the same report the CLI writes.

    ``mean``/``std`` (one value, or one per channel, on pixels scaled to [0, 1]) are the
    normalization the model was trained with, like ``--mean``/``--std``; without them and without
    the training record ``<weights>.json`` they are guessed from the statistics of ``data``.
    """
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
            mean=None if mean is None else tuple(float(v) for v in mean),
            std=None if std is None else tuple(float(v) for v in std),
            force=force,
            quiet=quiet,
        )
    )


def train(
    model: str,
    out: str | Path,
    *,
    data: str = "digits",
    eval_data: str | None = None,
    epochs: int = 15,
    lr: float = 0.05,
    batch_size: int = 64,
    augment: bool = False,
    holdout: float = 0.2,
    seed: int = 0,
    force: bool = False,
    quiet: bool = True,
) -> TrainResult:
    """``edgepack train`` as a function: writes the weights ``out`` and ``<out>.json`` beside.

    ``holdout`` and ``seed`` must match the later run's recipe (``eval.holdout``, ``eval.seed``)
    so that ``exporter.run`` validates on images the model never trained on.
    """
    from exporter.training.train_model import TrainOptions, train_model

    return train_model(
        TrainOptions(
            model=model,
            out=Path(out),
            data=data,
            eval_data=eval_data,
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            augment=augment,
            holdout=holdout,
            seed=seed,
            force=force,
            quiet=quiet,
        )
    )


def tune(
    model: str,
    out: str | Path,
    *,
    weights: str | None = None,
    data: str = "digits",
    eval_data: str | None = None,
    target: str = "x86_64",
    objective: str = "size",
    trials: int = 20,
    timeout_s: float | None = None,
    jobs: int = 1,
    storage: str | None = None,
    study: str | None = None,
    overrides: tuple[str, ...] = (),
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    quiet: bool = True,
) -> TuneResult:
    """``edgepack tune`` as a function: runs (or resumes) the study and writes tune.json,
    tune.html, best.toml and best/ into ``out``; ``result.report`` is tune.json.

    ``objective`` is ``size``, ``latency`` or ``instructions``; ``storage``/``study`` put the
    study in any Optuna storage URL (PostgreSQL for many machines; default SQLite in ``out``).
    """
    from exporter.tuning import TuneOptions
    from exporter.tuning import tune as run_tune

    return run_tune(
        TuneOptions(
            model=model,
            out=Path(out),
            weights=weights,
            data=data,
            eval_data=eval_data,
            target=target,
            objective=objective,
            trials=trials,
            timeout_s=timeout_s,
            jobs=jobs,
            storage=storage,
            study=study,
            overrides=tuple(overrides),
            mean=None if mean is None else tuple(float(v) for v in mean),
            std=None if std is None else tuple(float(v) for v in std),
            quiet=quiet,
        )
    )
