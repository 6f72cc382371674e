"""Turn a ``--model`` spec into something the pipeline can run.

Specs: a built-in name (``seed-cnn``), ``path/to/file.py:Factory``, ``package.module:Factory``,
a ``torch.export`` program (``.pt2``), or an ``.onnx`` file (compression is then skipped).
"""

from __future__ import annotations

from exporter.models.loading import LoadedModel, load_model, load_weights, set_mode

__all__ = ["LoadedModel", "load_model", "load_weights", "set_mode"]
