"""``edgepack package DIR --platform P`` and ``edgepack package --verify ZIP``."""

from __future__ import annotations

from pathlib import Path

import click

from exporter.errors import PackageError


@click.command("package")
@click.argument("target", type=click.Path(path_type=Path))
@click.option(
    "--platform",
    type=click.Choice(["android", "ios", "mcu"]),
    default="android",
    show_default=True,
    help="which USAGE.md and zip to write; mcu: C++ sources for TensorFlow Lite Micro "
    "(model_data.cc/.h, model_ops.h) of a run on an MCU target",
)
@click.option(
    "--verify",
    is_flag=True,
    help="TARGET is a package zip: check it against its manifest and run its models",
)
@click.option(
    "--artifact",
    "artifacts",
    multiple=True,
    metavar="NAME",
    help="the TFLite (and/or ONNX) artifact to ship, e.g. model.fp32.tflite: after a failed "
    "run, one that held its budgets (repeatable, one per format)",
)
@click.option(
    "--allow-failed",
    is_flag=True,
    help="ship an artifact that failed its budgets (marked allow_failed in the manifest)",
)
@click.option("--force", is_flag=True, help="replace an existing package directory and zip")
@click.option("-q", "--quiet", is_flag=True)
def command(target, platform, verify, artifacts, allow_failed, force, quiet):
    """Package the validated models of edgepack output directory TARGET for a mobile app.

    Writes TARGET/package/<platform>/ and TARGET/<dirname>-<platform>.zip: model.tflite (with
    TFLite metadata and labels), model.ort, labels.txt, manifest.json, USAGE.md. With --verify,
    exit 2 when a file or a model's answers differ from what manifest.json recorded.
    """
    from exporter.package import package_dir, verify_zip
    from exporter.package.mcu import is_mcu_zip, verify_mcu_zip

    if verify and is_mcu_zip(target):
        res = verify_mcu_zip(target)
        if not quiet:
            ran = (
                f"; the array of model_data.cc ran under TFLM in {res['arena_bytes']:,} bytes on "
                f"{res['samples']} sample(s), answers as recorded"
                if res.get("samples")
                else ""
            )
            click.echo(f"verified {target}: {res['files']} files match manifest.json{ran}")
        return
    if verify:
        res = verify_zip(target)
        if not quiet:
            ran = (
                f"; model.tflite and model.ort ran on {res['samples']} input(s) from "
                f"{res['inputs']}, answers as recorded, top-1 agreement "
                f"{res['tflite_ort_agreement']:.3f}"
            )
            click.echo(f"verified {target}: {res['files']} files match manifest.json{ran}")
        return
    if target.suffix == ".zip":
        raise PackageError(f"{target} is a zip: use --verify to check it")
    res = package_dir(
        target, platform, force=force, allow_failed=allow_failed, artifacts=tuple(artifacts)
    )
    if not quiet:
        size = res.zip.stat().st_size
        note = " (ships what FAILED its budgets)" if res.manifest["allow_failed"] else ""
        click.echo(f"package: {res.dir}/ and {res.zip} ({size:,} bytes){note}")
