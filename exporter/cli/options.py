"""Custom click parameter types shared by subcommands.

A value no run could use (NaN, Inf) is refused here, at the door, as one ``error:`` line naming
the option, not as click's usage text.
"""

from __future__ import annotations

import math

import click

from exporter.errors import DataError, RecipeError


def _option(param) -> str:
    return param.opts[0] if param is not None and param.opts else "value"


class FloatList(click.ParamType):
    """Comma-separated finite floats, e.g. ``--mean 0.49,0.48,0.45``."""

    name = "floats"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            values = tuple(float(v) for v in str(value).split(",") if v.strip())
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of numbers", param, ctx)
        if not all(math.isfinite(v) for v in values):
            # Normalization with NaN or Inf turns every input into NaN.
            raise DataError(f"{_option(param)}: {value} is not a list of finite numbers")
        return values


class FiniteFloat(click.ParamType):
    """One finite float, for shortcuts of recipe keys (``--sparsity 0.5``)."""

    name = "float"

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            number = value
        else:
            try:
                number = float(value)
            except ValueError:
                self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            raise RecipeError(f"{_option(param)}: {value} is not a finite number")
        return number


FLOATS = FloatList()
FINITE = FiniteFloat()
