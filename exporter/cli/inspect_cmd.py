"""``edgepack inspect FILE``: ops, parameters, per-tensor sparsity and bytes of an artifact."""

from __future__ import annotations

import json
from pathlib import Path

import click

from exporter.errors import InputFileError


@click.command("inspect")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def command(path: Path, as_json: bool):
    """Describe an .onnx or .tflite file."""
    if path.suffix == ".onnx":
        from exporter.onnx.export import describe_onnx

        info = describe_onnx(path)
    elif path.suffix == ".tflite":
        from exporter.tflite import describe_tflite

        info = describe_tflite(path)
    else:
        raise InputFileError(
            f"{path}: cannot inspect '{path.suffix or 'no suffix'}' files "
            "(expected .onnx or .tflite)"
        )
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"{info.get('path', path)}  ({info['format']}, {info['bytes']:,} bytes)")
    if "input_details" in info:  # TFLite: the tensor contract an app has to meet
        for kind in ("input", "output"):
            for io in info[f"{kind}_details"]:
                quant = (
                    f", scale {io['scale']:.6g}, zero point {io['zero_point']}"
                    if io.get("scale")
                    else ""
                )
                click.echo(f"{kind}: {io['name']} {io['shape']} {io['dtype']}{quant}")
    else:
        click.echo(f"input: {info['input']['name']} {info['input']['shape']}")
        click.echo(f"outputs: {', '.join(info['outputs'])}")
    click.echo("ops: " + ", ".join(f"{k} x{v}" for k, v in sorted(info["ops"].items())))
    if "params" in info:
        click.echo(f"params: {info['params']:,}  zeros: {info['zeros']:,} ({info['sparsity']:.1%})")
    click.echo(
        f"{'tensor':40} {'shape':>18} {'dtype':>8} {'bytes':>10} {'sparsity':>9} {'encoding':>10}"
    )
    for t in info["tensors"]:
        if t.get("bytes", 0) == 0:
            continue
        sp = t.get("sparsity")
        click.echo(
            f"{t['name'][:40]:40} {str(t['shape']):>18} {t['dtype']:>8} "
            f"{t['bytes']:>10,} {'' if sp is None else f'{sp:.1%}':>9} "
            f"{t.get('encoding', t.get('storage', '')):>10}"
        )
