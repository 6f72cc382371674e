"""TFLite sparse tensor encodings (``SparsityParameters``), built from a dense constant.

TFLite stores a sparse tensor TACO-style: the dense dims, optionally split into blocks, are
traversed in ``traversal_order``; each traversed dim is DENSE (just its size) or SPARSE_CSR
(``array_segments`` / ``array_indices``, as in CSR). A block dim maps back to the original dim
named in ``block_map``. The buffer then holds only the stored values, in traversal order.

Two layouts are produced here, both with the identity traversal order:

* ``csr``: every dim but the last DENSE, the last SPARSE_CSR. For an FC weight [out, in] this
  is plain CSR, the "random sparse" form the FULLY_CONNECTED kernel reads; for a conv filter
  OHWI it is CSR over the input channels, read by DENSIFY.
* ``block1xB`` (FC weights [out, in] only, ``in % B == 0``): dims (out, in / B, B) with
  block_map [1]; dim 1 SPARSE_CSR over block columns, the block dim DENSE of size B. A block
  is stored whole (zeros inside included) when any of its entries is non-zero. The
  FULLY_CONNECTED kernel recognises B = 4 (float32) and B = 16 (int8) by the dense size of
  the third dim.

Index arrays use the narrowest unsigned type that holds their values, since the runtime widens
them at load anyway and they are a large share of a sparse int8 tensor's bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Flatbuffer bytes of a SparsityParameters table beyond its index arrays: the table, its
# three vectors and their offsets (measured from written files: ~100-150 bytes).
_PARAMS_OVERHEAD = 64
_DIM_OVERHEAD = 32  # one DimensionMetadata table (+ its union vector header when sparse)


def index_dtype(limit: int) -> str:
    """Narrowest index type for values in ``[0, limit)``, e.g. indices into a dim of size
    ``limit``: uint8 up to 256, uint16 up to 65,536, else int32."""
    if limit <= 1 << 8:
        return "uint8"
    if limit <= 1 << 16:
        return "uint16"
    return "int32"


@dataclass(frozen=True)
class DimMeta:
    """One traversed dim: DENSE with ``dense_size``, or SPARSE_CSR with segments / indices."""

    dense_size: int = 0
    segments: np.ndarray | None = None
    indices: np.ndarray | None = None

    @property
    def is_sparse(self) -> bool:
        return self.segments is not None


@dataclass(frozen=True)
class SparseEncoding:
    """A dense constant re-encoded for TFLite; ``values`` replaces the tensor's buffer."""

    format: str  # "csr" | "block1x4" | "block1x16" | ...
    shape: tuple[int, ...]  # the dense shape (the tensor keeps it)
    traversal_order: tuple[int, ...]
    block_map: tuple[int, ...]
    dims: tuple[DimMeta, ...]
    values: np.ndarray

    @property
    def index_type(self) -> str:
        """The widest index dtype used (what the table reports)."""
        types = [a.dtype.name for d in self.dims if d.is_sparse for a in (d.segments, d.indices)]
        return max(types, key=lambda t: np.dtype(t).itemsize) if types else "-"

    @property
    def nbytes(self) -> int:
        """Estimated file bytes: values, index arrays and the metadata tables."""
        index = sum(d.segments.nbytes + d.indices.nbytes for d in self.dims if d.is_sparse)
        return int(self.values.nbytes + index + _PARAMS_OVERHEAD + _DIM_OVERHEAD * len(self.dims))


def _narrow(values: np.ndarray, limit: int) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=index_dtype(limit))


def encode_csr(arr: np.ndarray) -> SparseEncoding:
    """Leading dims DENSE, the last SPARSE_CSR (segments over the flattened leading dims)."""
    if arr.ndim < 2:
        raise ValueError(f"CSR needs rank >= 2, got shape {arr.shape}")
    rows = arr.reshape(-1, arr.shape[-1])
    nz_rows, cols = np.nonzero(rows)  # row-major order == traversal order
    counts = np.bincount(nz_rows, minlength=rows.shape[0])
    segments = np.concatenate([[0], np.cumsum(counts)])
    dims = tuple(DimMeta(dense_size=int(d)) for d in arr.shape[:-1]) + (
        DimMeta(
            segments=_narrow(segments, int(segments[-1]) + 1), indices=_narrow(cols, arr.shape[-1])
        ),
    )
    order = tuple(range(arr.ndim))
    return SparseEncoding("csr", tuple(arr.shape), order, (), dims, rows[nz_rows, cols].copy())


def encode_block(arr: np.ndarray, block: int) -> SparseEncoding:
    """1 x ``block`` blocks of a 2-D [out, in] weight: dims (out, in / block, block)."""
    if arr.ndim != 2 or arr.shape[1] % block:
        raise ValueError(
            f"1x{block} blocks need a 2-D weight with in % {block} == 0, got shape {arr.shape}"
        )
    out, cols = arr.shape
    blocks = arr.reshape(out, cols // block, block)
    nz_rows, nz_blocks = np.nonzero(np.any(blocks != 0, axis=2))
    counts = np.bincount(nz_rows, minlength=out)
    segments = np.concatenate([[0], np.cumsum(counts)])
    dims = (
        DimMeta(dense_size=out),
        DimMeta(
            segments=_narrow(segments, int(segments[-1]) + 1),
            indices=_narrow(nz_blocks, cols // block),
        ),
        DimMeta(dense_size=block),
    )
    values = blocks[nz_rows, nz_blocks].reshape(-1).copy()
    return SparseEncoding(f"block1x{block}", (out, cols), (0, 1, 2), (1,), dims, values)


def block_sparsity(arr: np.ndarray, block: int) -> float:
    """Fraction of all-zero 1 x ``block`` blocks (what the block kernels skip)."""
    blocks = arr.reshape(arr.shape[0], -1, block)
    return float(np.mean(~np.any(blocks != 0, axis=2)))


def decode(enc: SparseEncoding) -> np.ndarray:
    """The dense array back (for tests and ``describe``); supports both layouts above."""
    out = np.zeros(enc.shape, dtype=enc.values.dtype)
    sparse = enc.dims[-1] if enc.format == "csr" else enc.dims[1]
    seg, idx = sparse.segments.astype(np.int64), sparse.indices.astype(np.int64)
    rows = np.repeat(np.arange(len(seg) - 1), np.diff(seg))
    if enc.format == "csr":
        flat = out.reshape(-1, enc.shape[-1])
        flat[rows, idx] = enc.values
        return out
    block = enc.dims[2].dense_size
    view = out.reshape(enc.shape[0], -1, block)
    view[rows, idx] = enc.values.reshape(-1, block)
    return out
