"""``edgepack run``: the one-shot compress -> export -> validate -> report command."""

from __future__ import annotations

import json
from pathlib import Path

import click

from exporter.cli.options import FINITE, FLOATS
from exporter.errors import EXIT_BUDGET_FAILED, EXIT_OK


@click.command("run")
@click.pass_context
@click.option(
    "--model",
    required=True,
    help="seed-cnn | resnet8 | file.py:Factory | module:Factory | model.pt2 | model.onnx",
)
@click.option(
    "--weights", type=click.Path(dir_okay=False), help="state_dict (.pt), loaded weights-only"
)
@click.option(
    "--data",
    default="digits",
    show_default=True,
    help="digits | npz:PATH | imagefolder:DIR | cifar10:DIR",
)
@click.option("--eval-data", help="separate eval data (default: a seeded hold-out split of --data)")
@click.option("--target", default="x86_64", show_default=True, help="target name or recipe .toml")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="output directory (default dist/<model name>)",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="override a recipe key, e.g. --set compress.prune.sparsity=0.5 (repeatable)",
)
@click.option("--sparsity", type=FINITE, help="shortcut for --set compress.prune.sparsity=")
@click.option("--epochs", type=int, help="shortcut for --set compress.finetune.epochs=")
@click.option(
    "--qat-epochs",
    type=int,
    help="shortcut for --set quantize.qat_epochs= (QAT when int8 misses its budget)",
)
@click.option(
    "--output",
    "output",
    metavar="NAME",
    help="the model output to validate and export when it has several (an ONNX output name, a "
    "dict key, a namedtuple field or a tuple position; default: the first)",
)
@click.option(
    "--layout",
    type=click.Choice(["nchw", "nhwc"]),
    help="an .onnx model's input layout, when its input shape does not tell",
)
@click.option("--mean", type=FLOATS, help="per-channel mean after /255 (default: data statistics)")
@click.option("--std", type=FLOATS, help="per-channel std after /255")
@click.option("--force", is_flag=True, help="replace an existing --out directory")
@click.option("-q", "--quiet", is_flag=True, help="no progress bars or table")
@click.option("--json", "as_json", is_flag=True, help="print report.json to stdout")
@click.option(
    "--package/--no-package",
    "package",
    default=False,
    help="after a passed run, package it for --platform (see `edgepack package`); a failed "
    "run is not packaged, and says so",
)
@click.option(
    "--platform",
    type=click.Choice(["android", "ios"]),
    default="android",
    show_default=True,
    help="platform of --package",
)
def command(
    ctx,
    model,
    weights,
    data,
    eval_data,
    target,
    out,
    overrides,
    sparsity,
    epochs,
    qat_epochs,
    output,
    layout,
    mean,
    std,
    force,
    quiet,
    as_json,
    package,
    platform,
):
    """Compress MODEL, export ONNX and TFLite, validate every artifact on TARGET, report.

    Exit code 0 when every budget holds, 1 when one fails, 2 for bad input.
    """
    from exporter.pipeline import REPORT, RunOptions, run

    extra = list(overrides)
    if sparsity is not None:
        extra.append(f"compress.prune.sparsity={sparsity}")
    if epochs is not None:
        extra.append(f"compress.finetune.epochs={epochs}")
    if qat_epochs is not None:
        extra.append(f"quantize.qat_epochs={qat_epochs}")
    out = out or Path("dist") / Path(model.split(":")[-1]).stem.lower()
    result = run(
        RunOptions(
            model=model,
            out=out,
            weights=weights,
            data=data,
            eval_data=eval_data,
            target=target,
            overrides=tuple(extra),
            mean=mean,
            std=std,
            force=force,
            quiet=quiet or as_json,
            output=output,
            layout=layout,
        )
    )
    if as_json:
        click.echo(json.dumps(result.report, indent=2))
    elif not quiet:
        click.echo(f"report: {out / REPORT}")
        click.echo(f"report: {out / 'report.html'}")
    if package and not result.passed:
        from exporter.package import not_packaged_line

        click.echo(not_packaged_line(out, result.report), err=True)
    if package and result.passed:
        from exporter.package import package_dir

        # The run just replaced --out, so an older package inside it is already gone.
        pkg = package_dir(out, platform, force=force)
        if not quiet and not as_json:
            click.echo(f"package: {pkg.dir}/ and {pkg.zip}")
    ctx.exit(EXIT_OK if result.passed else EXIT_BUDGET_FAILED)
