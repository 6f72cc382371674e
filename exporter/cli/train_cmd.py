"""``edgepack train``: train a model on --data (the demo's and benchmarks' seed weights)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import click
import torch

from exporter.common.atomic import atomic_path, check_writable


@click.command("train")
@click.option(
    "--model", default="seed-cnn", show_default=True, help="built-in name or file.py:Factory"
)
@click.option("--data", default="digits", show_default=True, help="digits | npz:PATH | ...")
@click.option("--eval-data", help="eval data (default: the same hold-out split `run` uses)")
@click.option("--epochs", type=click.IntRange(1), default=15, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=0.05, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option("--augment/--no-augment", default=False, help="random crop + flip (natural images)")
@click.option(
    "--holdout",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.2,
    show_default=True,
    help="fraction of --data held out (must match the run's recipe)",
)
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="state_dict to write (a .json with the normalization goes beside it)",
)
@click.option("--force", is_flag=True)
@click.option("-q", "--quiet", is_flag=True)
def command(
    model, data, eval_data, epochs, lr, batch_size, augment, holdout, seed, out, force, quiet
):
    """Train MODEL on --data, holding out the split that `edgepack run` validates on."""
    from exporter.common.progress import make_progress, stderr_console
    from exporter.inputs.data import channel_stats, check_fits
    from exporter.inputs.prepare import (
        build_torch_model,
        check_model_output,
        sidecar_path,
        split_data,
    )
    from exporter.recipe import EvalSpec
    from exporter.training.loop import TrainConfig, accuracy, predict, train

    check_writable(out, force)
    check_writable(sidecar_path(out), force)
    full, splits = split_data(data, eval_data, EvalSpec(samples=10**9, holdout=holdout, seed=seed))
    norm = channel_stats(full)
    torch.manual_seed(seed)  # the initial weights too: same command, same trained weights
    module = build_torch_model(model, None, full).module
    if module is None:
        raise click.BadParameter("an ONNX model cannot be trained", param_hint="--model")
    classes = check_model_output(module, splits.train, norm)
    check_fits(splits.train, full.image_shape, classes)
    check_fits(splits.eval, full.image_shape, classes)
    cfg = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, augment=augment)
    with make_progress(quiet) as progress:
        losses = train(
            module,
            norm.apply(splits.train.images),
            splits.train.labels,
            cfg,
            progress=progress,
            label="train",
        )
    acc = accuracy(predict(module, norm.apply(splits.eval.images)), splits.eval.labels)
    # Serialized in memory first: torch.save writing to a full disk fails with a RuntimeError
    # from its zip writer, while a plain write fails with OSError(ENOSPC), which atomic_path
    # turns into a one-line error.
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    with atomic_path(out, force=force) as tmp:
        tmp.write_bytes(buf.getvalue())
    with atomic_path(sidecar_path(out), force=force) as tmp:
        tmp.write_text(
            json.dumps(
                {
                    "model": model,
                    "data": data,
                    "mean": list(norm.mean),
                    "std": list(norm.std),
                    "classes": list(full.classes),
                    "epochs": epochs,
                    "final_loss": losses[-1],
                    "eval_accuracy": acc,
                    "eval": splits.eval_note,
                },
                indent=2,
            )
        )
    stderr_console(quiet).print(
        f"trained {model} for {epochs} epochs: eval accuracy "
        f"{acc:.2f} % on {len(splits.eval)} images ({splits.eval_note})"
    )
    click.echo(str(out))
