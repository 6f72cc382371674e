"""The ``edgepack`` command: a click group, one module per subcommand.

Errors a user can cause (:class:`~exporter.errors.EdgepackError`) become one line on stderr and
their exit code; nothing else is caught, so a bug still shows its traceback.

Subcommand modules import torch, onnx and the runtimes inside their functions: ``edgepack
--help`` or ``targets`` then starts in well under a second instead of several.
"""

from __future__ import annotations

import signal

import click

from exporter import __version__
from exporter.errors import EdgepackError


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every ``finally`` and context manager cleans up
    (temp outputs, locks, child processes) before the process exits."""


def _terminate(signum, frame) -> None:
    # A second SIGTERM during the cleanup ends the process at once.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise Terminated


class EdgepackGroup(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EdgepackError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except Terminated:
            click.echo("error: terminated; no partial output was left", err=True)
            ctx.exit(128 + signal.SIGTERM)
        except KeyboardInterrupt:
            click.echo("error: interrupted; no partial output was left", err=True)
            ctx.exit(130)


@click.group(cls=EdgepackGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgepack")
def cli() -> None:
    """Compress a PyTorch CNN, export it to ONNX and TFLite, and validate it on its target."""


def _register() -> None:
    from exporter.cli import (
        check_cmd,
        compare_cmd,
        inspect_cmd,
        ops_cmd,
        package_cmd,
        run_cmd,
        target_cmd,
        targets_cmd,
        train_cmd,
        tune_cmd,
    )

    for module in (
        run_cmd,
        train_cmd,
        check_cmd,
        targets_cmd,
        target_cmd,
        inspect_cmd,
        ops_cmd,
        package_cmd,
        compare_cmd,
        tune_cmd,
    ):
        cli.add_command(module.command)


_register()


def main(args: list[str] | None = None) -> None:
    """The console script; ``args`` defaults to ``sys.argv[1:]``."""
    from exporter.common import interrupt

    signal.signal(signal.SIGTERM, _terminate)
    interrupt.install()
    cli.main(args, prog_name="edgepack")
