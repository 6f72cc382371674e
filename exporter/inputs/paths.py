"""The files and folders a command's input specs name, so an output can be checked against them
(exporter.common.atomic.check_out_path) before any work."""

from __future__ import annotations

from pathlib import Path

from exporter.inputs.prepare import sidecar_path
from exporter.models.zoo import BUILTIN


def model_file(spec: str) -> Path | None:
    """The file of a model spec (``file.py:Factory``, ``.pt2``, ``.onnx``); None for a built-in
    or an importable ``module:Factory``."""
    if spec in BUILTIN:
        return None
    if Path(spec).suffix in (".onnx", ".pt2"):
        return Path(spec)
    target, _, _ = spec.rpartition(":")
    return Path(target) if target.endswith(".py") else None


def input_paths(
    model: str, data: str, eval_data: str | None = None, weights: str | Path | None = None
) -> list[tuple[str, Path]]:
    """``(option, path)`` of every file or folder the specs name (data specs: ``kind:PATH``)."""
    found = []
    if (path := model_file(model)) is not None:
        found.append(("--model", path))
    if weights:
        found += [("--weights", Path(weights)), ("--weights", sidecar_path(weights))]
    for option, spec in (("--data", data), ("--eval-data", eval_data)):
        _, _, arg = (spec or "").partition(":")
        if arg:
            found.append((option, Path(arg)))
    return found
