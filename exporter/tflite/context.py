"""State shared by the converters while lowering one ONNX graph.

It maps each ONNX value to the TFLite tensor(s) holding it and converts between layouts on
demand: a consumer asks for the layout it needs and gets a cached tensor, with a TRANSPOSE
emitted only when no reshape can do the job.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from exporter.errors import ConversionError
from exporter.tflite import layout as L
from exporter.tflite import quant
from exporter.tflite.ir import Graph
from exporter.tflite.onnx_reader import OnnxGraph, attrs, node_label


class ConversionContext:
    def __init__(self, onnx_graph: OnnxGraph, graph: Graph | None = None):
        self.onnx = onnx_graph
        self.graph = graph if graph is not None else Graph()
        # ONNX value name -> {layout: TFLite tensor name}; the first entry is the natural one.
        self._values: dict[str, dict[L.Layout, str]] = {}
        self._consts: dict[tuple[str, L.Layout], str] = {}
        self.node: onnx.NodeProto | None = None
        # QDQ models only: int8 parameters of ONNX values, and nodes that must stay float.
        self.qparams: dict[str, quant.QParams] = {}
        self.float_nodes: set[str] = set()

    # ----- reading the ONNX side -------------------------------------------------------
    def const(self, name: str) -> np.ndarray | None:
        """The value of an initializer / folded constant, or None for activations and ''."""
        return self.onnx.constants.get(name) if name else None

    def shape(self, name: str) -> tuple[int, ...]:
        try:
            return self.onnx.shapes[name]
        except KeyError:
            raise self.error(f"tensor '{name}' has no static shape after shape inference") from None

    def declare(self, name: str, shape: tuple[int, ...]) -> str:
        """Give a converter-internal intermediate value an ONNX-side shape; returns ``name``."""
        self.onnx.shapes[name] = tuple(shape)
        return name

    def attrs(self, node: onnx.NodeProto) -> dict[str, Any]:
        return attrs(node)

    def error(self, message: str) -> ConversionError:
        node = self.node
        if node is None:
            return ConversionError(message)
        return ConversionError(message, node_label(node), node.op_type)

    # ----- values and layouts ----------------------------------------------------------
    def layout(self, name: str) -> L.Layout:
        """Natural layout of an ONNX value (constants are PLAIN until asked otherwise)."""
        if name in self._values:
            return next(iter(self._values[name]))
        return L.PLAIN

    def bind(self, onnx_name: str, tensor: str, layout: L.Layout) -> None:
        self._values.setdefault(onnx_name, {})[layout] = tensor
        params = self.qparams.get(onnx_name)
        held = self.graph.tensors[tensor]
        if params is not None and held.scales is None and not held.is_const:
            # Every TFLite copy of an ONNX value (any layout) carries the value's int8 params.
            quant.set_params(held, params)

    def output(self, onnx_name: str, layout: L.Layout, dtype: str = "float32") -> str:
        """Create and bind the TFLite tensor for ONNX output ``onnx_name`` in ``layout``."""
        shape = self.shape(onnx_name)
        tensor = self.graph.add_tensor(onnx_name, L.stored_shape(shape, layout), dtype)
        self.bind(onnx_name, tensor, layout)
        return tensor

    def tensor(self, name: str, layout: L.Layout | None = None) -> str:
        """TFLite tensor holding ONNX value ``name`` in ``layout`` (default: its natural one)."""
        const = self.const(name)
        if const is not None and name not in self._values:
            # Constants are re-materialised from numpy per layout, never transposed at runtime.
            want = layout or L.PLAIN
            key = (name, want)
            if key not in self._consts:
                if want == L.NHWC and const.ndim != 4:
                    raise self.error(f"constant '{name}' of rank {const.ndim} cannot be NHWC")
                self._consts[key] = self.graph.add_const(name, L.transpose_const(const, want))
            return self._consts[key]
        if name not in self._values:
            raise self.error(f"value '{name}' is used before it is produced")
        held = self._values[name]
        if layout is None:
            return next(iter(held.values()))
        if layout in held:
            return held[layout]
        tensor = self._relayout(name, held, layout)
        self.bind(name, tensor, layout)
        return tensor

    def _relayout(self, name: str, held: dict[L.Layout, str], want: L.Layout) -> str:
        shape = self.shape(name)
        have, src = next(iter(held.items()))
        if have.kind == "flat_hwc":
            # Undo the (h, w, c) column order: [N, HWC] -> [N,H,W,C] -> [N,C,H,W] -> [N, CHW].
            c, h, w = have.chw  # type: ignore[misc]
            nhwc = self.reshape(src, (shape[0], h, w, c))
            nchw = self.transpose(nhwc, L.NHWC_TO_NCHW)
            plain = self.reshape(nchw, shape)
            return plain if want == L.PLAIN else self._relayout(name, {L.PLAIN: plain}, want)
        if have == L.PLAIN and want == L.NHWC:
            return self.permute(src, shape, L.NCHW_TO_NHWC)
        if have == L.NHWC and want == L.PLAIN:
            return self.permute(src, L.to_nhwc_shape(shape), L.NHWC_TO_NCHW)
        if have == L.NHWC and want.kind == "flat_hwc":
            return self.reshape(src, shape)
        if want.kind == "flat_hwc":
            plain = held.get(L.PLAIN) or self._relayout(name, held, L.PLAIN)
            c, h, w = want.chw  # type: ignore[misc]
            return self.reshape(
                self.permute(
                    self.reshape(plain, (shape[0], c, h, w)), (shape[0], c, h, w), L.NCHW_TO_NHWC
                ),
                shape,
            )
        raise self.error(f"cannot bring '{name}' from layout {have} to {want}")

    # ----- emitting ---------------------------------------------------------------------
    def emit(self, op: str, inputs: list[str | None], outputs: list[str], **options: Any) -> None:
        operator = self.graph.add_op(op, inputs, outputs, **options)
        if self.node is not None and node_label(self.node) in self.float_nodes:
            operator.keep_float = True

    def const_tensor(self, hint: str, value: Any, dtype: str | None = None) -> str:
        return self.graph.add_const(hint, value, dtype)

    def temp(self, hint: str, shape: tuple[int, ...] | list[int], dtype: str = "float32") -> str:
        return self.graph.add_tensor(hint, shape, dtype)

    def reshape(self, src: str, shape: tuple[int, ...] | list[int]) -> str:
        shape = tuple(int(d) for d in shape)
        if self.graph.tensors[src].shape == shape:
            return src
        out = self.temp(f"{src}_reshaped", shape, self.graph.tensors[src].dtype)
        self.emit(
            "RESHAPE",
            [src, self.const_tensor(f"{out}_shape", list(shape), "int32")],
            [out],
            new_shape=list(shape),
        )
        return out

    def transpose(self, src: str, perm: tuple[int, ...] | list[int]) -> str:
        shape = L.permute_shape(self.graph.tensors[src].shape, perm)
        out = self.temp(f"{src}_transposed", shape, self.graph.tensors[src].dtype)
        self.emit("TRANSPOSE", [src, self.const_tensor(f"{out}_perm", list(perm), "int32")], [out])
        return out

    def permute(self, src: str, shape: tuple[int, ...], perm: tuple[int, ...] | list[int]) -> str:
        """Transpose ``src`` (of ``shape``) by ``perm``, as a RESHAPE when memory order allows."""
        if L.is_pure_reshape(shape, perm):
            return self.reshape(src, L.permute_shape(shape, perm))
        return self.transpose(src, perm)
