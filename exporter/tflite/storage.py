"""Per-tensor storage decision for a finished TFLite graph: dense, or a sparse encoding that
the consuming kernel (and the target's delegate) accepts at invoke, only where smaller.

What LiteRT 2.3 accepts, measured on x86 (tests/exporter/tflite/test_tflite_sparse.py runs
every choice below under the default XNNPACK resolver and builtin-only):

* FULLY_CONNECTED reads a sparse weight directly: float32 CSR or 1x4 blocks, int8 only 1x16
  blocks. Anything else fails at *invoke* ("Unsupported sparse fully-connected weight format").
  XNNPACK leaves such a node to the builtin kernel.
* DENSIFY turns any sparse constant back into a dense tensor; XNNPACK folds it at load, so the
  consumer runs at dense speed. DENSIFY -> FULLY_CONNECTED in int8 fails under XNNPACK
  ("failed to prepare"), so that pair is only chosen for delegate "none".

Speed (FC 2048 -> 1024): direct 1x4 float32 breaks even with dense at ~75 % block sparsity and
random CSR is never faster, so unstructured weights always go through DENSIFY (same size
within ~100 bytes, dense speed) and a block format feeds the kernel directly only above the
break-even (below it, through DENSIFY when the delegate allows it). int8 1x16 is direct under
XNNPACK whatever the sparsity: there is no other accepted sparse form there.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from exporter.tflite.ir import Graph, Operator
from exporter.tflite.sparsity import SparseEncoding, block_sparsity, encode_block, encode_csr

DELEGATES = ("xnnpack", "none")
# Block sparsity from which a direct block kernel is at least as fast as dense (measured).
DIRECT_BLOCK_MIN_SPARSITY = 0.75
# File bytes a DENSIFY costs: its output tensor (name, shape, quantization), the operator and
# its opcode entry.
DENSIFY_OVERHEAD = 160
_WEIGHTED = {"FULLY_CONNECTED": 1, "CONV_2D": 1}  # op -> index of its weight input


@dataclass
class WeightStorage:
    """One row of the table: how a constant weight is stored and what it costs."""

    name: str
    shape: list[int]
    dtype: str
    sparsity: float
    encoding: str  # "dense" | "csr" | "block1x4" | "block1x16"
    via: str  # "-" (dense), "direct" (the kernel reads it) or "densify" (a DENSIFY op)
    index_type: str  # "-" | "uint8" | "uint16" | "int32"
    dense_bytes: int
    stored_bytes: int
    consumer: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _Choice:
    encoding: SparseEncoding
    via: str  # "direct" | "densify"

    @property
    def nbytes(self) -> int:
        return self.encoding.nbytes + (DENSIFY_OVERHEAD if self.via == "densify" else 0)


def _candidates(op: str, w: np.ndarray, delegate: str) -> list[_Choice]:
    """Every encoding the consumer accepts at invoke under ``delegate``."""
    fp32 = w.dtype == np.float32
    if op == "CONV_2D":
        return [_Choice(encode_csr(w), "densify")] if w.dtype in (np.float32, np.int8) else []
    if op != "FULLY_CONNECTED" or w.ndim != 2:
        return []
    out: list[_Choice] = []
    block = 4 if fp32 else 16 if w.dtype == np.int8 else 0
    # DENSIFY -> FC: float32 everywhere, int8 only without XNNPACK (it fails to prepare).
    densify_ok = fp32 or (w.dtype == np.int8 and delegate == "none")
    if densify_ok:
        out.append(_Choice(encode_csr(w), "densify"))
    if block and w.shape[1] % block == 0:
        enc = encode_block(w, block)
        fast = block_sparsity(w, block) >= DIRECT_BLOCK_MIN_SPARSITY
        out.append(_Choice(enc, "densify" if densify_ok and not fast else "direct"))
    return out


def _weight_uses(graph: Graph) -> dict[str, Operator]:
    """Constant weights consumed exactly once, as the weight input of a supported op."""
    uses: dict[str, list[tuple[Operator, int]]] = {}
    for op in graph.operators:
        for i, name in enumerate(op.inputs):
            if name is not None and graph.tensors[name].is_const:
                uses.setdefault(name, []).append((op, i))
    return {
        name: ops[0][0]
        for name, ops in uses.items()
        if len(ops) == 1 and _WEIGHTED.get(ops[0][0].op) == ops[0][1]
    }


def decide(graph: Graph, delegate: str = "xnnpack") -> tuple[list[WeightStorage], dict]:
    """The table (one row per weight) and the chosen encodings by tensor name."""
    if delegate not in DELEGATES:
        raise ValueError(f"delegate must be one of {DELEGATES}, got {delegate!r}")
    rows: list[WeightStorage] = []
    chosen: dict[str, _Choice] = {}
    for name, op in _weight_uses(graph).items():
        t = graph.tensors[name]
        w = np.asarray(t.data)
        dense = int(w.nbytes)
        best = min(_candidates(op.op, w, delegate), key=lambda c: c.nbytes, default=None)
        if best is not None and best.nbytes < dense:
            chosen[name] = best
        c = chosen.get(name)
        rows.append(
            WeightStorage(
                name,
                [int(d) for d in w.shape],
                w.dtype.name,
                float(np.mean(w == 0)) if w.size else 0.0,
                c.encoding.format if c else "dense",
                c.via if c else "-",
                c.encoding.index_type if c else "-",
                dense,
                c.nbytes if c else dense,
                op.op,
            )
        )
    return rows, chosen


def store_tensor(graph: Graph, name: str, encoding: SparseEncoding, via: str) -> None:
    """Store constant ``name`` as ``encoding``; with ``via="densify"`` its consumers read the
    output of a DENSIFY op (same dtype and quantization) instead."""
    t = graph.tensors[name]
    t.sparsity = encoding
    if via != "densify":
        # The consumer reads it directly; op_versions gives that FULLY_CONNECTED version 8.
        return
    dense = graph.add_tensor(f"{name}_dense", t.shape, t.dtype)
    d = graph.tensors[dense]
    d.scales, d.zero_points = t.scales, t.zero_points
    d.quantized_dimension = t.quantized_dimension
    graph.replace_uses(name, dense)
    # DENSIFY reads only a constant, so running it first keeps the order topological.
    graph.operators.insert(0, Operator("DENSIFY", [name], [dense]))


def apply_storage(graph: Graph, delegate: str = "xnnpack") -> list[WeightStorage]:
    """Re-encode the graph's weights in place as :func:`decide` says; returns the table."""
    rows, chosen = decide(graph, delegate)
    for name, choice in chosen.items():
        store_tensor(graph, name, choice.encoding, choice.via)
    return rows
