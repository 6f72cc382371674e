"""ONNX-side pattern fusion run before lowering: op sequences TFLite has one op for.

torch exports ``nn.GELU()`` as ``x * 0.5 * (1 + Erf(x / sqrt(2)))`` and ``nn.GELU("tanh")`` as
``x * 0.5 * (1 + Tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))``. TFLite has no ERF, but a GELU op
with ``approximate`` false / true that XNNPACK runs as one kernel, so both become an ONNX
``Gelu`` node (the opset-20 op, whose converter writes that GELU). A pattern is fused only
when none of its intermediate values is read elsewhere or is a graph output.

``x * HardSigmoid(x)`` with torch's alpha = 1/6, beta = 1/2 (a hand-written hard-swish) becomes
``HardSwish``: one HARD_SWISH instead of the hard-sigmoid's ADD + RELU6 + MUL and a MUL.
"""

from __future__ import annotations

import math

import onnx

from exporter.tflite.onnx_reader import OnnxGraph, attrs, node_label

_SQRT2 = math.sqrt(2.0)
_TANH_SCALE = math.sqrt(2.0 / math.pi)
_TANH_CUBIC = 0.044715


class _Index:
    """Producer / consumer look-ups over the ONNX node list."""

    def __init__(self, g: OnnxGraph) -> None:
        self.g = g
        self.producer = {o: n for n in g.nodes for o in n.output}
        self.readers: dict[str, list[onnx.NodeProto]] = {}
        for n in g.nodes:
            for i in n.input:
                self.readers.setdefault(i, []).append(n)

    def scalar(self, name: str) -> float | None:
        value = self.g.constants.get(name)
        return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None

    def is_const(self, name: str, want: float) -> bool:
        value = self.scalar(name)
        return value is not None and math.isclose(value, want, rel_tol=1e-3)

    def only_reader(self, name: str, op_type: str) -> onnx.NodeProto | None:
        """The single node reading ``name`` if it is an ``op_type`` and ``name`` is internal."""
        users = self.readers.get(name, [])
        if name in self.g.outputs or len(users) != 1 or users[0].op_type != op_type:
            return None
        return users[0]

    def made_by(self, name: str, op_type: str) -> onnx.NodeProto | None:
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op_type else None

    def other(self, node: onnx.NodeProto, name: str) -> str | None:
        """The other input of a two-input node that reads ``name``."""
        if len(node.input) != 2 or name not in node.input:
            return None
        return node.input[1] if node.input[0] == name else node.input[0]


def _tail(ix: _Index, start: str, x: str) -> list[onnx.NodeProto] | None:
    """Match ``(1 + start) * 0.5 * x`` in any association torch writes; the last node's output
    is the GELU. Returns the matched nodes (the Add first) or None."""
    add = ix.only_reader(start, "Add")
    if add is None or not ix.is_const(ix.other(add, start) or "", 1.0):
        return None
    mul1 = ix.only_reader(add.output[0], "Mul")
    if mul1 is None:
        return None
    first = ix.other(mul1, add.output[0])
    half = ix.made_by(first or "", "Mul")
    if half is not None and ix.only_reader(half.output[0], "Mul") is mul1:
        # (0.5 * x) * (1 + erf): the half was computed on its own.
        return [add, half, mul1] if ix.is_const(ix.other(half, x) or "", 0.5) else None
    mul2 = ix.only_reader(mul1.output[0], "Mul")
    if mul2 is None:
        return None
    second = ix.other(mul2, mul1.output[0])
    if (first == x and ix.is_const(second or "", 0.5)) or (
        second == x and ix.is_const(first or "", 0.5)
    ):
        return [add, mul1, mul2]
    return None


def _match_erf(ix: _Index, erf: onnx.NodeProto) -> tuple[str, list[onnx.NodeProto]] | None:
    scale = ix.producer.get(erf.input[0])
    if scale is None or ix.only_reader(scale.output[0], "Erf") is not erf:
        return None
    if scale.op_type == "Div" and ix.is_const(scale.input[1], _SQRT2):
        x: str | None = scale.input[0]
    elif scale.op_type == "Mul":
        x = next((i for i in scale.input if ix.is_const(ix.other(scale, i) or "", 0.5**0.5)), None)
    else:
        x = None
    if x is None:
        return None
    tail = _tail(ix, erf.output[0], x)
    return None if tail is None else (x, [scale, erf, *tail])


def _cube(ix: _Index, name: str) -> tuple[str, list[onnx.NodeProto]] | None:
    """``x^3`` as Pow(x, 3) or x * (x * x): (x, nodes)."""
    node = ix.producer.get(name)
    if node is None:
        return None
    if node.op_type == "Pow" and ix.is_const(node.input[1], 3.0):
        return node.input[0], [node]
    if node.op_type != "Mul":
        return None
    for sq_name in node.input:
        sq = ix.made_by(sq_name, "Mul")
        x = ix.other(node, sq_name)
        if sq is not None and x is not None and list(sq.input) == [x, x]:
            return x, [sq, node]
    return None


def _match_tanh(ix: _Index, tanh: onnx.NodeProto) -> tuple[str, list[onnx.NodeProto]] | None:
    outer = ix.made_by(tanh.input[0], "Mul")
    if outer is None:
        return None
    inner_name = next(
        (i for i in outer.input if ix.is_const(ix.other(outer, i) or "", _TANH_SCALE)), None
    )
    inner = ix.made_by(inner_name or "", "Add")
    if inner is None:
        return None
    for term_name in inner.input:
        term = ix.made_by(term_name, "Mul")
        x = ix.other(inner, term_name)
        if term is None or x is None:
            continue
        cube_name = next(
            (i for i in term.input if ix.is_const(ix.other(term, i) or "", _TANH_CUBIC)), None
        )
        cube = _cube(ix, cube_name or "")
        if cube is None or cube[0] != x:
            continue
        body = [*cube[1], term, inner, outer, tanh]
        tail = _tail(ix, tanh.output[0], x)
        return None if tail is None else (x, body + tail)
    return None


def _internal_only(ix: _Index, nodes: list[onnx.NodeProto]) -> bool:
    """Every value the pattern makes, except the last one, is read only inside the pattern."""
    inside = {id(n) for n in nodes}
    for n in nodes[:-1]:
        for out in n.output:
            if out in ix.g.outputs or any(id(r) not in inside for r in ix.readers.get(out, [])):
                return False
    return True


def fuse_gelu(g: OnnxGraph) -> OnnxGraph:
    """Replace each exact (Erf) or tanh-approximated GELU sub-graph by one ``Gelu`` node."""
    while True:
        ix = _Index(g)
        found = None
        for node in g.nodes:
            if node.op_type in ("Erf", "Tanh"):
                match = _match_erf(ix, node) if node.op_type == "Erf" else _match_tanh(ix, node)
                if match is not None and _internal_only(ix, match[1]):
                    found = (node.op_type, *match)
                    break
        if found is None:
            return g
        kind, x, nodes = found
        last = max(nodes, key=g.nodes.index)
        gelu = onnx.helper.make_node(
            "Gelu",
            [x],
            [last.output[0]],
            name=f"{node_label(last)}_gelu",
            approximate="none" if kind == "Erf" else "tanh",
        )
        at = g.nodes.index(last)
        g.nodes[at] = gelu
        drop = {id(n) for n in nodes if n is not last}
        g.nodes = [n for n in g.nodes if id(n) not in drop]


def fuse_hard_swish(g: OnnxGraph) -> OnnxGraph:
    """Replace ``Mul(x, HardSigmoid(x))`` (alpha 1/6, beta 1/2) by ``HardSwish(x)``."""
    ix = _Index(g)
    for hs in [n for n in g.nodes if n.op_type == "HardSigmoid"]:
        a = attrs(hs)
        if not (
            math.isclose(float(a.get("alpha", 0.2)), 1 / 6, rel_tol=1e-6)
            and math.isclose(float(a.get("beta", 0.5)), 0.5, rel_tol=1e-6)
        ):
            continue
        mul = ix.only_reader(hs.output[0], "Mul")
        if mul is None or ix.other(mul, hs.output[0]) != hs.input[0]:
            continue
        swish = onnx.helper.make_node(
            "HardSwish", [hs.input[0]], [mul.output[0]], name=f"{node_label(mul)}_hardswish"
        )
        g.nodes = [swish if n is mul else n for n in g.nodes if n is not hs]
    return g


def fuse_patterns(g: OnnxGraph) -> OnnxGraph:
    """All ONNX-side fusions, in order."""
    from exporter.tflite.onnx_spatial import fuse_spatial_maps

    return fuse_spatial_maps(fuse_hard_swish(fuse_gelu(g)))
