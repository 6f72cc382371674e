"""Graph -> Graph clean-ups applied, in order, after lowering.

Each pass is small and independently tested. A pass that raises aborts the conversion with
a ConversionError naming it: skipping one silently could ship a numerically wrong model.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from exporter.errors import ConversionError
from exporter.tflite import layout as L
from exporter.tflite.ir import Graph, Operator

Pass = Callable[[Graph], Graph]


def _single_consumer(graph: Graph, tensor: str) -> Operator | None:
    """The only op reading ``tensor``, or None if it has 0 or several readers or is an output."""
    if tensor in graph.outputs:
        return None
    users = graph.consumers(tensor)
    return users[0] if len(users) == 1 and users[0].inputs.count(tensor) == 1 else None


def remove_identity(graph: Graph) -> Graph:
    """Drop IDENTITY pseudo-ops (ONNX Identity, Dropout, no-op Reshape/Clip)."""
    for op in [o for o in graph.operators if o.op == "IDENTITY"]:
        src, dst = op.inputs[0], op.outputs[0]
        assert src is not None
        graph.operators.remove(op)
        if dst not in graph.outputs:
            graph.replace_uses(dst, src)
            continue
        producer = graph.producer(src)
        if producer is not None and src not in graph.outputs:
            # Keep the graph-output name: let the producer write ``dst`` directly.
            producer.outputs = [dst if o == src else o for o in producer.outputs]
            graph.replace_uses(src, dst)
            continue
        # Output aliases a graph input or constant: a real op must produce it.
        shape = graph.add_const(f"{dst}_shape", list(graph.tensors[dst].shape), "int32")
        graph.add_op("RESHAPE", [src, shape], [dst], new_shape=list(graph.tensors[dst].shape))
    return graph


def _fold_one(op: Operator, values: list[np.ndarray]) -> np.ndarray | None:
    binary = {
        "ADD": np.add,
        "SUB": np.subtract,
        "MUL": np.multiply,
        "DIV": np.divide,
        "MAXIMUM": np.maximum,
        "MINIMUM": np.minimum,
    }
    if op.op in binary and op.options.get("fused_activation_function", "NONE") == "NONE":
        return binary[op.op](values[0], values[1])
    if op.op == "RESHAPE":
        return values[0].reshape([int(d) for d in values[1]])
    if op.op == "TRANSPOSE":
        return np.transpose(values[0], [int(p) for p in values[1]])
    if op.op == "CONCATENATION" and op.options.get("fused_activation_function", "NONE") == "NONE":
        return np.concatenate(values, axis=op.options["axis"])
    return None


def fold_constants(graph: Graph) -> Graph:
    """Evaluate ops whose inputs are all constants (e.g. a TRANSPOSE of a weight)."""
    for op in list(graph.operators):
        if len(op.outputs) != 1 or op.outputs[0] in graph.outputs:
            continue
        if not op.inputs or any(i is None or graph.const(i) is None for i in op.inputs):
            continue
        value = _fold_one(op, [graph.const(i) for i in op.inputs])  # type: ignore[misc]
        if value is None:
            continue
        out = graph.tensors[op.outputs[0]]
        out.data = np.ascontiguousarray(np.asarray(value).astype(out.dtype).reshape(out.shape))
        graph.operators.remove(op)
    return graph


_LINEAR = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"}


def _per_channel(value: np.ndarray, out_shape: tuple[int, ...]) -> np.ndarray | None:
    """``value`` as a [C] vector if it only varies along the last (channel) axis."""
    channels = out_shape[-1]
    if value.ndim > len(out_shape) or any(d != 1 for d in value.shape[:-1]):
        return None
    if value.size not in (1, channels):
        return None
    return np.broadcast_to(value.reshape(-1), (channels,)).astype(np.float32)


def _own_const(graph: Graph, op: Operator, index: int, value: np.ndarray) -> None:
    """Store ``value`` as op input ``index``, copying first if another op shares the tensor."""
    name = op.inputs[index]
    if name is None or len(graph.consumers(name)) > 1:
        new = graph.add_const(f"{op.outputs[0]}_folded", value)
        op.inputs = op.inputs + [None] * (index + 1 - len(op.inputs))
        op.inputs[index] = new
    else:
        graph.tensors[name].data = np.ascontiguousarray(value.astype(np.float32))


def fold_affine(graph: Graph) -> Graph:
    """Fold a per-channel MUL / ADD / SUB by a constant into the preceding conv or FC.

    This is where BatchNorm after Conv disappears (BN lowers to MUL + ADD) and where an
    ONNX MatMul + Add becomes one FULLY_CONNECTED with a bias.
    """
    changed = True
    while changed:
        changed = False
        for producer in list(graph.operators):
            if (
                producer.op not in _LINEAR
                or producer.options.get("fused_activation_function", "NONE") != "NONE"
            ):
                continue
            out = producer.outputs[0]
            user = _single_consumer(graph, out)
            if (
                user is None
                or user.op not in ("MUL", "ADD", "SUB")
                or user.options.get("fused_activation_function", "NONE") != "NONE"
            ):
                continue
            other = next(i for i in user.inputs if i != out)
            const = graph.const(other)
            if const is None or (user.op == "SUB" and user.inputs[0] != out):
                continue
            if graph.tensors[user.outputs[0]].shape != graph.tensors[out].shape:
                continue  # the constant broadcasts the result to a bigger shape
            vec = _per_channel(const, graph.tensors[out].shape)
            if vec is None:
                continue
            weights = graph.const(producer.inputs[1])
            bias_name = producer.inputs[2] if len(producer.inputs) > 2 else None
            bias = graph.const(bias_name) if bias_name else None
            bias = np.zeros_like(vec) if bias is None else bias.astype(np.float32)
            if user.op == "MUL":
                # Output channel is axis 0 for CONV_2D / FC filters, the last axis for depthwise.
                scale = (
                    vec.reshape((1,) * (weights.ndim - 1) + (-1,))
                    if producer.op == "DEPTHWISE_CONV_2D"
                    else vec.reshape((-1,) + (1,) * (weights.ndim - 1))
                )
                _own_const(graph, producer, 1, weights * scale)
                bias = bias * vec
            else:
                bias = bias + vec if user.op == "ADD" else bias - vec
            _own_const(graph, producer, 2, bias)
            producer.outputs = [user.outputs[0]]
            graph.operators.remove(user)
            changed = True
    return graph


def _const_operand(graph: Graph, op: Operator, live: str) -> np.ndarray | None:
    """The constant operand of a two-input op whose other input is ``live``."""
    if len(op.inputs) != 2 or op.inputs.count(live) != 1:
        return None
    other = op.inputs[1] if op.inputs[0] == live else op.inputs[0]
    return graph.const(other)


def _per_channel_affine(
    graph: Graph, mul: Operator
) -> tuple[Operator, np.ndarray, np.ndarray] | None:
    """(ADD/SUB, scale, shift) when ``mul`` and its single reader compute x * scale + shift per
    channel of a rank-4 (NHWC) tensor, with no broadcast and no fused activation."""
    x = next((i for i in mul.inputs if i is not None and graph.const(i) is None), None)
    if x is None or len(graph.tensors[x].shape) != 4:
        return None
    shape = graph.tensors[x].shape
    scale = _const_operand(graph, mul, x)
    user = _single_consumer(graph, mul.outputs[0])
    if scale is None or user is None or user.op not in ("ADD", "SUB"):
        return None
    shift = _const_operand(graph, user, mul.outputs[0])
    if shift is None or (user.op == "SUB" and user.inputs[0] != mul.outputs[0]):
        return None
    if any(o.options.get("fused_activation_function", "NONE") != "NONE" for o in (mul, user)):
        return None
    if graph.tensors[user.outputs[0]].shape != shape:
        return None
    scale_vec, shift_vec = _per_channel(scale, shape), _per_channel(shift, shape)
    if scale_vec is None or shift_vec is None:
        return None
    return user, scale_vec, shift_vec if user.op == "ADD" else -shift_vec


def affine_to_depthwise(graph: Graph) -> Graph:
    """Write a per-channel MUL + ADD left after fold_affine (a BatchNorm with no conv in front,
    as in DenseNet's pre-activation layers) as one 1x1 DEPTHWISE_CONV_2D: one pass over the
    tensor instead of two, and in int8 one weighted op with an exact per-channel multiplier
    instead of a MUL whose result ONNX never quantized (which kept both ops in float)."""
    for mul in [o for o in graph.operators if o.op == "MUL"]:
        found = _per_channel_affine(graph, mul)
        if found is None:
            continue
        user, scale, shift = found
        x = next(i for i in mul.inputs if i is not None and graph.const(i) is None)
        name = user.outputs[0]
        mul.op = "DEPTHWISE_CONV_2D"
        mul.inputs = [
            x,
            graph.add_const(f"{name}_affine_scale", scale.reshape(1, 1, 1, -1)),
            graph.add_const(f"{name}_affine_shift", shift),
        ]
        mul.outputs = [name]
        mul.options = dict(
            padding="VALID",
            stride_h=1,
            stride_w=1,
            depth_multiplier=1,
            dilation_h_factor=1,
            dilation_w_factor=1,
            fused_activation_function="NONE",
        )
        graph.operators.remove(user)
    return graph


# Builtin kernels clamp only for these (CalculateActivationRange); a fused TANH would be
# silently ignored, so a separate TANH op is kept.
_ACTIVATIONS = {"RELU": "RELU", "RELU6": "RELU6", "RELU_N1_TO_1": "RELU_N1_TO_1"}
_FUSES = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "SUB", "MUL"}


def fuse_activations(graph: Graph) -> Graph:
    """Fold RELU / RELU6 / RELU_N1_TO_1 into the producer's fused_activation_function."""
    for act in [o for o in graph.operators if o.op in _ACTIVATIONS]:
        src = act.inputs[0]
        assert src is not None
        producer = graph.producer(src)
        if producer is None or producer.op not in _FUSES or _single_consumer(graph, src) is not act:
            continue
        if producer.options.get("fused_activation_function", "NONE") != "NONE":
            continue
        producer.options["fused_activation_function"] = _ACTIVATIONS[act.op]
        producer.outputs = [act.outputs[0]]
        graph.operators.remove(act)
    return graph


def cancel_transposes(graph: Graph) -> Graph:
    """Merge back-to-back TRANSPOSEs; drop the pair (or a lone identity perm) entirely."""
    changed = True
    while changed:
        changed = False
        for op in list(graph.operators):
            if op.op != "TRANSPOSE" or op not in graph.operators:
                continue
            perm = [int(p) for p in graph.const(op.inputs[1])]  # type: ignore[union-attr]
            src = op.inputs[0]
            assert src is not None
            prev = graph.producer(src)
            if prev is not None and prev.op == "TRANSPOSE":
                perm = list(L.compose([int(p) for p in graph.const(prev.inputs[1])], perm))  # type: ignore[union-attr]
                src = prev.inputs[0]
                assert src is not None
                op.inputs = [src, graph.add_const(f"{op.outputs[0]}_perm", perm, "int32")]
                changed = True
            if L.is_identity(perm) and op.outputs[0] not in graph.outputs:
                graph.operators.remove(op)
                graph.replace_uses(op.outputs[0], src)
                changed = True
    return graph


#: Most inputs XNNPACK's delegate takes in one CONCATENATION (LiteRT 2.3); it leaves wider ones
#: (DenseNet's dense blocks concatenate up to 33 maps) to the builtin kernel.
XNNPACK_MAX_CONCAT_INPUTS = 5


def split_wide_concats(graph: Graph) -> Graph:
    """Rewrite a CONCATENATION of more than ``XNNPACK_MAX_CONCAT_INPUTS`` inputs as a tree of
    narrower ones: the same bytes in the same order, each intermediate carrying the output's
    quantization parameters so that an int8 concat still requantizes once."""
    for op in [o for o in graph.operators if o.op == "CONCATENATION"]:
        if len(op.inputs) <= XNNPACK_MAX_CONCAT_INPUTS:
            continue
        out = graph.tensors[op.outputs[0]]
        axis = op.options["axis"] % len(out.shape)
        at = graph.operators.index(op)
        inputs = list(op.inputs)
        while len(inputs) > XNNPACK_MAX_CONCAT_INPUTS:
            grouped: list[str | None] = []
            for start in range(0, len(inputs), XNNPACK_MAX_CONCAT_INPUTS):
                group = inputs[start : start + XNNPACK_MAX_CONCAT_INPUTS]
                if len(group) == 1:
                    grouped.extend(group)
                    continue
                shapes = [graph.tensors[n].shape for n in group if n is not None]
                shape = list(shapes[0])
                shape[axis] = sum(s[axis] for s in shapes)
                part = graph.add_tensor(f"{out.name}_part", shape, out.dtype)
                if out.scales is not None:
                    graph.tensors[part].scales = list(out.scales)
                    graph.tensors[part].zero_points = list(out.zero_points or [])
                graph.operators.insert(
                    at,
                    Operator(
                        "CONCATENATION",
                        group,
                        [part],
                        {"axis": op.options["axis"], "fused_activation_function": "NONE"},
                        op.keep_float,
                    ),
                )
                at += 1
                grouped.append(part)
            inputs = grouped
        op.inputs = inputs
    return graph


def remove_dead(graph: Graph) -> Graph:
    """Drop ops nothing reads and tensors (with their buffers) nothing references."""
    live = set(graph.outputs)
    kept: list[Operator] = []
    for op in reversed(graph.operators):
        if any(o in live for o in op.outputs):
            kept.append(op)
            live.update(i for i in op.inputs if i is not None)
    graph.operators = list(reversed(kept))
    used = set(graph.inputs) | set(graph.outputs)
    for op in graph.operators:
        used.update(i for i in op.inputs if i is not None)
        used.update(op.outputs)
    graph.tensors = {k: v for k, v in graph.tensors.items() if k in used}
    return graph


PASSES: list[tuple[str, Pass]] = [
    ("remove_identity", remove_identity),
    ("fold_constants", fold_constants),
    ("fold_affine", fold_affine),
    ("affine_to_depthwise", affine_to_depthwise),
    ("fuse_activations", fuse_activations),
    ("cancel_transposes", cancel_transposes),
    ("split_wide_concats", split_wide_concats),
    ("remove_dead", remove_dead),
]


def run_passes(graph: Graph, passes: list[tuple[str, Pass]] | None = None) -> Graph:
    for name, fn in PASSES if passes is None else passes:
        try:
            graph = fn(graph)
        except Exception as exc:
            raise ConversionError(
                f"graph pass '{name}' failed: {type(exc).__name__}: {exc}"
            ) from exc
    return graph
