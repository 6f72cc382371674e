"""Custom click parameter types shared by subcommands."""

from __future__ import annotations

import click


class FloatList(click.ParamType):
    """Comma-separated floats, e.g. ``--mean 0.49,0.48,0.45``."""

    name = "floats"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            return tuple(float(v) for v in str(value).split(",") if v.strip())
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of numbers", param, ctx)


FLOATS = FloatList()
