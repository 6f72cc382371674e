"""Errors a user can cause, each mapped to one exit code and one line of text.

The CLI catches :class:`EdgepackError` and prints ``error: <message>``; anything else
is a bug in edgepack and is allowed to show a traceback.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_BUDGET_FAILED = 1
EXIT_BAD_INPUT = 2


class EdgepackError(Exception):
    """Base class: a problem with the user's input or environment, shown as one line."""

    exit_code: int = EXIT_BAD_INPUT


class InputFileError(EdgepackError):
    """A model, weights or data file is missing, unreadable or corrupt."""


class ModelLoadError(EdgepackError):
    """The model could not be built or its weights do not match it."""


class DataError(EdgepackError):
    """The data set is empty, malformed or does not fit the model."""


class RecipeError(EdgepackError):
    """A target recipe has an unknown key, a wrong type or a value out of range."""


class OutputExistsError(EdgepackError):
    """The output already exists and --force was not given."""


class ConversionError(EdgepackError):
    """One node of a graph could not be converted."""

    def __init__(self, message: str, node: str | None = None, op_type: str | None = None):
        where = f"node '{node}' ({op_type}): " if node else ""
        super().__init__(where + message)
        self.node = node
        self.op_type = op_type


class UnsupportedOpsError(ConversionError):
    """Several nodes are not supported; the message lists every one with counts."""

    def __init__(self, offenders: list[tuple[str, str, str]]):
        # offenders: (node name, op type, reason)
        self.offenders = offenders
        counts: dict[str, int] = {}
        for _, op, _ in offenders:
            counts[op] = counts.get(op, 0) + 1
        summary = ", ".join(f"{op} x{n}" for op, n in sorted(counts.items()))
        nodes = "; ".join(f"{name} ({op}: {why})" for name, op, why in offenders)
        Exception.__init__(self, f"{len(offenders)} unsupported node(s) [{summary}]: {nodes}")
        self.node = None
        self.op_type = None


class OutputWriteError(EdgepackError):
    """An output could not be written (disk or quota full, read-only); nothing was left behind."""


class OutputPathError(EdgepackError):
    """--out overlaps an input or the working directory, is not edgepack's to replace, or is
    being written by another edgepack process."""


class RuntimeCheckError(EdgepackError):
    """Validation could not run (runtime missing, runner failed)."""


class PackageError(EdgepackError):
    """An output directory cannot be packaged, or a package fails verification."""
