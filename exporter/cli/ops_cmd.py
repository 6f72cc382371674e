"""``edgepack ops``: the ONNX ops the TFLite writer converts, from its registry."""

from __future__ import annotations

import click


@click.command("ops")
def command():
    """Print the supported-ops table of the ONNX -> TFLite writer."""
    from exporter.tflite import supported_ops

    rows = supported_ops()
    width = max(len(op) for op, _ in rows)
    for op, notes in rows:
        click.echo(f"{op:<{width}}  {notes}")
