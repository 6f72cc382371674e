"""A cache of ONNX exports, keyed by what the export reads: code, structure, weights, shape.

Exporting a CNN through torch.onnx takes 5-17 s here, most of it in torch.export and its
decompositions, and an unchanged model (a CI loop, `edgepack tune` varying int8 or runtime
settings, the same weights exported again) gives the same graph every time. The key hashes the
versions of torch, onnxscript and onnx, the opset and input shape, ``repr(module)``, the source of
the file of every submodule's class (and a GraphModule's generated code) and every parameter and buffer, bit
for bit. A model whose forward depends on code outside its classes could still change without
changing the key, so a cached graph is used only after it computes what the module computes on
random images (the same check a fresh export passes); otherwise the model is exported again.

Entries live in ``$EDGEPACK_CACHE_DIR`` (default ``$XDG_CACHE_HOME/edgepack/onnx`` or
``~/.cache/edgepack/onnx``); the newest are kept within :data:`MAX_BYTES`. ``EDGEPACK_CACHE_DIR=``
(empty) turns the cache off. Any failure to read or write it is a cache miss, never an error.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import inspect
import json
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

MAX_BYTES = 512 * 2**20
_KEY_VERSION = "1"  # bump when the export itself changes (paths, checks, options)


def cache_dir() -> Path | None:
    """Where exports are cached; None when the cache is turned off."""
    configured = os.environ.get("EDGEPACK_CACHE_DIR")
    if configured is not None:
        return Path(configured) if configured else None
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "edgepack" / "onnx"


def _class_source(kind: type) -> bytes:
    """The class's name and the whole file that defines it (a file read is cheaper than
    ``inspect.getsource``'s parse, and any edit of the file changes the key: a safe miss)."""
    name = f"{kind.__module__}.{kind.__qualname__}".encode()
    try:
        source = inspect.getsourcefile(kind)
        return name + b"\0" + (Path(source).read_bytes() if source else b"")
    except (OSError, TypeError):  # defined in a REPL or built in: its name must do
        return name


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def export_key(module: nn.Module, input_shape: tuple[int, ...], opset: int) -> str:
    """The hex digest of everything the export of ``module`` depends on (see the module doc)."""
    digest = hashlib.sha256()

    def add(text: str) -> None:
        digest.update(text.encode())
        digest.update(b"\0")

    add(_KEY_VERSION)
    for dist in ("torch", "onnxscript", "onnx"):
        add(f"{dist} {_version(dist)}")
    add(f"{opset} {tuple(input_shape)}")
    add(repr(module))
    for kind in sorted({type(m) for m in module.modules()}, key=lambda k: k.__qualname__):
        digest.update(_class_source(kind))
    for sub in module.modules():
        if isinstance(getattr(sub, "code", None), str):  # fx GraphModule: the graph is code
            add(sub.code)
    tensors = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        add(f"{name} {tensor.dtype} {tuple(tensor.shape)}")
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def lookup(key: str) -> tuple[bytes, dict] | None:
    """The cached model and what the export recorded about it, or None."""
    folder = cache_dir()
    if folder is None:
        return None
    try:
        data = (folder / f"{key}.onnx").read_bytes()
        meta = json.loads((folder / f"{key}.json").read_text())
        os.utime(folder / f"{key}.onnx")  # recently used: evicted last
    except (OSError, ValueError):
        return None
    return (data, meta) if isinstance(meta, dict) else None


def store(key: str, data: bytes, meta: dict) -> None:
    """Keep an export, then trim the cache to :data:`MAX_BYTES` (oldest first)."""
    folder = cache_dir()
    if folder is None:
        return
    with contextlib.suppress(OSError):
        folder.mkdir(parents=True, exist_ok=True)
        for suffix, payload in (("json", json.dumps(meta).encode()), ("onnx", data)):
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{key}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(payload)
                os.replace(tmp, folder / f"{key}.{suffix}")
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        _trim(folder)


def _trim(folder: Path) -> None:
    entries = sorted(folder.glob("*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)
    total = 0
    for path in entries:
        total += path.stat().st_size
        if total > MAX_BYTES:
            path.unlink(missing_ok=True)
            path.with_suffix(".json").unlink(missing_ok=True)
