"""Sparse storage for ONNX: pruned weights as ``sparse_initializer`` (COO), only where smaller.

ONNX allows 1-D linearised int64 indices; onnx.checker rejects narrower index types. Each
stored non-zero then costs its value plus 8 bytes of index, so a tensor pays off only when
``nnz * (itemsize + 8) < size * itemsize`` — above 67 % sparsity for fp32 and 89 % for int8.
onnxruntime densifies sparse initializers at load, so this is a download-size win only; the
report always gives gzip bytes too, since that is what an app download sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from exporter.common.atomic import atomic_path
from exporter.onnx.export import load_onnx

INDEX_BYTES = 8
# Per-tensor protobuf overhead of the sparse form (two extra TensorProtos and their dims).
SPARSE_OVERHEAD = 64


@dataclass
class TensorStorage:
    name: str
    shape: list[int]
    dtype: str
    sparsity: float
    encoding: str  # dense | coo
    dense_bytes: int
    stored_bytes: int


def _sparse_bytes(arr: np.ndarray) -> int:
    nnz = int(np.count_nonzero(arr))
    return nnz * (arr.itemsize + INDEX_BYTES) + SPARSE_OVERHEAD


def _to_sparse(arr: np.ndarray, name: str) -> onnx.SparseTensorProto:
    flat = arr.reshape(-1)
    idx = np.flatnonzero(flat).astype(np.int64)
    values = numpy_helper.from_array(flat[idx], name)
    indices = numpy_helper.from_array(idx, f"{name}_indices")
    return onnx.helper.make_sparse_tensor(values, indices, list(arr.shape))


def sparsify_onnx(src: Path, dst: Path, *, force: bool = True) -> tuple[list[TensorStorage], bool]:
    """Rewrite ``src`` with each weight in its smaller encoding; returns the decisions and
    whether any tensor went sparse (if none did, nothing is written)."""
    model = load_onnx(src)
    decisions: list[TensorStorage] = []
    keep, sparse = [], []
    for init in model.graph.initializer:
        arr = numpy_helper.to_array(init)
        dense = arr.nbytes
        sp = _sparse_bytes(arr) if arr.ndim >= 2 else dense + 1
        use_sparse = sp < dense
        decisions.append(
            TensorStorage(
                init.name,
                list(arr.shape),
                str(arr.dtype),
                float(np.mean(arr == 0)) if arr.size else 0.0,
                "coo" if use_sparse else "dense",
                dense,
                sp if use_sparse else dense,
            )
        )
        (sparse if use_sparse else keep).append((init, arr))
    if not sparse:
        return decisions, False
    del model.graph.initializer[:]
    model.graph.initializer.extend(init for init, _ in keep)
    model.graph.sparse_initializer.extend(_to_sparse(arr, init.name) for init, arr in sparse)
    # Dense type annotations left for these names would contradict the sparse type.
    names = {init.name for init, _ in sparse}
    kept_info = [vi for vi in model.graph.value_info if vi.name not in names]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept_info)
    onnx.checker.check_model(model)
    with atomic_path(dst, force=force) as tmp:
        onnx.save_model(model, str(tmp))
    return decisions, True
