"""``edgepack check DIR --target T``: validate an output directory on a target."""

from __future__ import annotations

import json
from pathlib import Path

import click

from exporter.errors import EXIT_BUDGET_FAILED, EXIT_OK


@click.command("check")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--target", default="x86_64", show_default=True, help="target name or recipe .toml")
@click.option("--host", help="user@host[:port] for SSH targets (overrides the recipe)")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE")
@click.option("--force", is_flag=True, help="replace an earlier check of this target")
@click.option("-q", "--quiet", is_flag=True)
@click.option("--json", "as_json", is_flag=True, help="print the check report to stdout")
@click.pass_context
def command(ctx, out_dir, target, host, overrides, force, quiet, as_json):
    """Validate the artifacts in OUT_DIR on TARGET; writes OUT_DIR/checks/<target>.json."""
    from exporter.targets.check import check_dir

    report = check_dir(
        out_dir, target, host=host, overrides=tuple(overrides), force=force, quiet=quiet or as_json
    )
    if as_json:
        click.echo(json.dumps(report, indent=2))
    ctx.exit(EXIT_OK if report["passed"] else EXIT_BUDGET_FAILED)
