"""``edgepack train``: train a model on --data (the demo's and benchmarks' seed weights)."""

from __future__ import annotations

from pathlib import Path

import click


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
    from exporter.common.progress import stderr_console
    from exporter.training.train_model import TrainOptions, UntrainableModelError, train_model

    try:
        result = train_model(
            TrainOptions(
                model=model,
                out=out,
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
    except UntrainableModelError as exc:
        raise click.BadParameter(str(exc), param_hint="--model") from None
    stderr_console(quiet).print(
        f"trained {model} for {epochs} epochs: eval accuracy "
        f"{result.eval_accuracy:.2f} % on {result.eval_images} images ({result.eval_note})"
    )
    click.echo(str(out))
