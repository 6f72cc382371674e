"""The TFLite-side graph the converters build and the passes rewrite.

Deliberately schema-free: op codes are the ``BuiltinOperator`` names as strings and options
are plain dicts keyed by the schema's snake_case field names, so only ``writer.py`` has to
know the flatbuffer object API.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from exporter.tflite.sparsity import SparseEncoding

#: Op codes that never reach the writer: passes must remove them.
PSEUDO_OPS = frozenset({"IDENTITY"})


@dataclass
class Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"  # numpy dtype name; the writer maps it to TensorType
    data: np.ndarray | None = None  # constant payload, already in TFLite layout
    # Quantization is unused for float32 export but carried so int8 needs no IR change.
    scales: list[float] | None = None
    zero_points: list[int] | None = None
    quantized_dimension: int = 0
    # Sparse storage: the buffer holds ``sparsity.values`` instead of ``data`` (which stays the
    # dense array, so passes and tests can still read the constant).
    sparsity: SparseEncoding | None = None

    @property
    def is_const(self) -> bool:
        return self.data is not None


@dataclass
class Operator:
    op: str  # BuiltinOperator name, e.g. "CONV_2D"
    inputs: list[str | None]  # None is an omitted optional input (-1 in the file)
    outputs: list[str]
    options: dict[str, Any] = field(default_factory=dict)
    keep_float: bool = False  # int8 export: the source node was left in float on purpose


@dataclass
class Graph:
    tensors: dict[str, Tensor] = field(default_factory=dict)
    operators: list[Operator] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    name: str = "main"

    def copy(self) -> Graph:
        """A copy whose tensors, operators and I/O lists can be rewritten without touching this
        graph. Constant arrays are shared: no pass or storage step modifies one in place."""
        return Graph(
            {name: replace(t) for name, t in self.tensors.items()},
            [
                replace(
                    op, inputs=list(op.inputs), outputs=list(op.outputs), options=dict(op.options)
                )
                for op in self.operators
            ],
            list(self.inputs),
            list(self.outputs),
            self.name,
        )

    def unique_name(self, hint: str) -> str:
        if hint not in self.tensors:
            return hint
        i = 1
        while f"{hint}_{i}" in self.tensors:
            i += 1
        return f"{hint}_{i}"

    def add_tensor(
        self, hint: str, shape: tuple[int, ...] | list[int], dtype: str = "float32"
    ) -> str:
        name = self.unique_name(hint)
        self.tensors[name] = Tensor(name, tuple(int(d) for d in shape), dtype)
        return name

    def add_const(
        self, hint: str, value: np.ndarray | float | int | list, dtype: str | None = None
    ) -> str:
        """Add a constant tensor; float64/int64 data is narrowed to the TFLite types we emit."""
        arr = np.asarray(value)
        if dtype is None:
            dtype = "int32" if arr.dtype.kind in "iu" else "float32"
        arr = np.ascontiguousarray(arr.astype(dtype))
        name = self.unique_name(hint)
        self.tensors[name] = Tensor(name, arr.shape, dtype, arr)
        return name

    def add_op(
        self, op: str, inputs: list[str | None], outputs: list[str], **options: Any
    ) -> Operator:
        operator = Operator(op, list(inputs), list(outputs), dict(options))
        self.operators.append(operator)
        return operator

    def const(self, name: str | None) -> np.ndarray | None:
        if name is None:
            return None
        return self.tensors[name].data

    def consumers(self, name: str) -> list[Operator]:
        return [op for op in self.operators if name in op.inputs]

    def producer(self, name: str) -> Operator | None:
        for op in self.operators:
            if name in op.outputs:
                return op
        return None

    def replace_uses(self, old: str, new: str) -> None:
        """Point every consumer (and graph output) of ``old`` at ``new``."""
        for op in self.operators:
            op.inputs = [new if i == old else i for i in op.inputs]
        self.outputs = [new if o == old else o for o in self.outputs]

    def rename(self, old: str, new: str) -> None:
        """Rename tensor ``old`` to the unused name ``new`` everywhere it is referenced."""
        t = self.tensors.pop(old)
        t.name = new
        self.tensors[new] = t
        for op in self.operators:
            op.inputs = [new if i == old else i for i in op.inputs]
            op.outputs = [new if o == old else o for o in op.outputs]
        self.inputs = [new if i == old else i for i in self.inputs]
        self.outputs = [new if o == old else o for o in self.outputs]

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for op in self.operators:
            counts[op.op] = counts.get(op.op, 0) + 1
        return dict(sorted(counts.items()))
