"""ONNX-side fusion of spatial index gymnastics into one matrix product.

``nn.AdaptiveAvgPool2d((7, 7))`` on a map smaller than (or not dividing) its output - vgg11_bn
or alexnet at 64x64 pool a 2x2 or 1x1 map - is exported by torch as Transpose -> GatherND
(constant indices) -> Transpose -> Where (constant masks) -> Gather / Add ... -> Div, or
ReduceMean. Whatever the sequence, it computes ``y[n, c, :, :] = A @ x[n, c, :, :].ravel()``:
one constant [O1*O2, H*W] matrix applied to every channel's plane. Channels-last that is
``[N, H*W, C] -> A @ . -> [N, O1*O2, C]``: a single BATCH_MATMUL between free RESHAPEs, no
TRANSPOSE, run by XNNPACK (fp32; an int8 model keeps it in float between DEQUANTIZE and
QUANTIZE, which XNNPACK also runs, because XNNPACK has no int8 BATCH_MATMUL).

``A`` is not derived from the pattern's structure: the sub-graph is evaluated on one basis
image per input position (onnx's reference evaluator) and the result is checked on a random
image, so a look-alike that is not such a map (a non-zero fill, a channel mix, a per-channel
scale) is left alone, and pre-flight reports it.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from exporter.tflite.onnx_reader import OnnxGraph

# Ops that move, select, mask or sum elements; all linear in their one live input when their
# other inputs are constants (verified numerically anyway).
_LINEAR = frozenset(
    {
        "Transpose",
        "GatherND",
        "Gather",
        "Where",
        "Add",
        "Sub",
        "Mul",
        "Div",
        "ReduceMean",
        "ReduceSum",
        "Reshape",
        "Squeeze",
        "Unsqueeze",
        "Identity",
    }
)
#: Largest input plane evaluated basis image by basis image.
MAX_PLANE = 256
_TOLERANCE = 1e-5


class _Region:
    def __init__(self, g: OnnxGraph, seed: onnx.NodeProto) -> None:
        self.g = g
        self.readers: dict[str, list[onnx.NodeProto]] = {}
        for n in g.nodes:
            for i in n.input:
                self.readers.setdefault(i, []).append(n)
        producer = {o: n for n in g.nodes for o in n.output}
        self.nodes = [seed]
        self.x = seed.input[0]
        # The gather reads the 4-D map through transposes (torch moves H, W to the front).
        while (prev := producer.get(self.x)) is not None and prev.op_type == "Transpose":
            if len(self.readers.get(self.x, [])) != 1 or self.x in g.outputs:
                break
            self.nodes.insert(0, prev)
            self.x = prev.input[0]
        self._grow(g.nodes.index(seed))

    def _live(self, n: onnx.NodeProto) -> list[str]:
        return [i for i in n.input if i and i not in self.g.constants]

    def _grow(self, start: int) -> None:
        made = {o for n in self.nodes for o in n.output}
        for n in self.g.nodes[start + 1 :]:
            live = self._live(n)
            if n.op_type not in _LINEAR or not live or not all(i in made for i in live):
                continue
            if any(len(self.g.shapes.get(o, ())) < 4 for o in n.output):
                continue  # the map ends at a 4-D value; a flatten after it is not part of it
            self.nodes.append(n)
            made.update(n.output)

    def output(self) -> str | None:
        """The one value the region hands to the rest of the graph, if there is exactly one."""
        inside = {id(n) for n in self.nodes}
        leaving = {
            o
            for n in self.nodes
            for o in n.output
            if o in self.g.outputs or any(id(r) not in inside for r in self.readers.get(o, []))
        }
        return leaving.pop() if len(leaving) == 1 else None


def _evaluate(g: OnnxGraph, nodes: list[onnx.NodeProto], x: str, y: str, images: np.ndarray):
    from onnx.reference import ReferenceEvaluator  # slow import, only when a seed is found

    needed = {i for n in nodes for i in n.input if i in g.constants}
    graph = onnx.helper.make_graph(
        nodes,
        "spatial_map",
        [onnx.helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, None)],
        [onnx.helper.make_empty_tensor_value_info(y)],
        initializer=[numpy_helper.from_array(np.asarray(g.constants[k]), k) for k in needed],
    )
    model = onnx.helper.make_model(graph, opset_imports=g.model.opset_import)
    session = ReferenceEvaluator(model)
    return [np.asarray(session.run(None, {x: image})[0]) for image in images]


def _coefficients(g: OnnxGraph, region: _Region, y: str) -> np.ndarray | None:
    """A[c, m, k]: output position m of channel c per input position k, or None when the
    region is not such a per-channel linear map."""
    n, c, h, w = g.shapes[region.x]
    _, _, o1, o2 = g.shapes[y]
    basis = np.zeros((h * w + 1, n, c, h, w), np.float32)
    for k in range(h * w):
        basis[k, :, :, k // w, k % w] = 1.0
    rng = np.random.default_rng(0)
    basis[-1] = rng.standard_normal((n, c, h, w)).astype(np.float32)
    try:
        outs = _evaluate(g, region.nodes, region.x, y, basis)
    except Exception:  # an op the reference evaluator cannot run: not ours to fuse
        return None
    if any(o.shape != (n, c, o1, o2) for o in outs):
        return None
    coeff = np.stack([o[0].reshape(c, o1 * o2) for o in outs[:-1]], axis=-1)
    probe = np.einsum("cmk,nck->ncm", coeff, basis[-1].reshape(n, c, h * w))
    ref = outs[-1].reshape(n, c, o1 * o2)
    if np.abs(probe - ref).max() > _TOLERANCE * max(1.0, float(np.abs(ref).max())):
        return None
    # One matrix serves every channel (true of pooling); a per-channel map is left alone.
    return coeff if np.array_equal(coeff, np.broadcast_to(coeff[:1], coeff.shape)) else None


def _find(g: OnnxGraph) -> tuple[_Region, str, np.ndarray] | None:
    for seed in g.nodes:
        if seed.op_type != "GatherND" or seed.input[1] not in g.constants:
            continue
        region = _Region(g, seed)
        y = region.output()
        x_shape, y_shape = g.shapes.get(region.x, ()), g.shapes.get(y or "", ())
        if y is None or len(x_shape) != 4 or len(y_shape) != 4 or x_shape[:2] != y_shape[:2]:
            continue
        if x_shape[2] * x_shape[3] > MAX_PLANE or region.x in g.constants:
            continue
        coeff = _coefficients(g, region, y)
        if coeff is not None:
            return region, y, coeff
    return None


def _fresh(g: OnnxGraph, hint: str) -> str:
    name, i = hint, 0
    while name in g.shapes or name in g.constants:
        i += 1
        name = f"{hint}_{i}"
    return name


def _node(g: OnnxGraph, op: str, ins: list[str], shape: tuple[int, ...], label: str, **kw):
    """A new node writing a fresh float value of ``shape``; returns (node, value name)."""
    out = _fresh(g, f"{label}_{op.lower()}")
    g.shapes[out] = shape
    g.elem_types[out] = onnx.TensorProto.FLOAT
    return onnx.helper.make_node(op, ins, [out], name=out, **kw), out


def _const(g: OnnxGraph, value: np.ndarray, label: str) -> str:
    name = _fresh(g, label)
    g.constants[name] = value
    g.shapes[name] = tuple(value.shape)
    return name


def _matmul_nodes(g: OnnxGraph, x: str, y: str, coeff: np.ndarray) -> list[onnx.NodeProto]:
    """``y = A @ x`` over the flattened plane, written channels-last: the two transposes are
    exactly the NCHW <-> NHWC moves the converters make free, so TFLite gets one BATCH_MATMUL
    between RESHAPEs (A constant, the NHWC map as [N, H*W, C])."""
    n, c, h, w = g.shapes[x]
    _, _, o1, o2 = g.shapes[y]
    label = f"{y}_spatial"
    to_last, a = _node(g, "Transpose", [x], (n, h, w, c), label, perm=[0, 2, 3, 1])
    rows = _const(g, np.asarray([n, h * w, c], np.int64), f"{label}_rows")
    flat, b = _node(g, "Reshape", [a, rows], (n, h * w, c), label)
    coeff_name = _const(g, coeff[0].astype(np.float32), f"{label}_coefficients")
    matmul, m = _node(g, "MatMul", [coeff_name, b], (n, o1 * o2, c), label)
    plane = _const(g, np.asarray([n, o1, o2, c], np.int64), f"{label}_plane")
    unflat, d = _node(g, "Reshape", [m, plane], (n, o1, o2, c), label)
    back = onnx.helper.make_node("Transpose", [d], [y], name=f"{label}_nchw", perm=[0, 3, 1, 2])
    return [to_last, flat, matmul, unflat, back]


def fuse_spatial_maps(g: OnnxGraph) -> OnnxGraph:
    """Replace each verified spatial linear map (one for every channel) by a MatMul with the
    map's constant coefficient matrix."""
    while (found := _find(g)) is not None:
        region, y, coeff = found
        last = next(k for k in region.nodes if y in k.output)
        at = g.nodes.index(last)
        g.nodes[at : at + 1] = _matmul_nodes(g, region.x, y, coeff)
        drop = {id(k) for k in region.nodes if k is not last}
        g.nodes = [k for k in g.nodes if id(k) not in drop]
    return g
