"""Operator-code versions: the one place that decides the ``version`` of each op the writer emits.

A TFLite op code carries a version so that a runtime without the kernel variant a model needs
refuses the model at load ("Didn't find op for builtin opcode 'CONV_2D' version '3'") instead of
running it wrongly: an int8 CONV_2D at version 1 loads on a runtime whose CONV_2D only knows
float, and XNNPACK reads a sparse FULLY_CONNECTED weight as dense unless the op says version 8.

The rules follow ``GetBuiltinOperatorVersion`` in TensorFlow's
``tensorflow/lite/tools/versioning/op_version.cc`` (with the per-op facts of
``op_signature.cc``: per-channel weights, grouped convolution, sparse weight), which is what
the TFLite converter writes and what LiteRT's kernels register. Only the branches reachable
with the tensor types the writer emits (float32, float16 constants, int8, uint8, int16
activations of 16x8 models, int32, int64, bool) are kept: int4 and string variants cannot
occur. An op without a rule is version 1, as in ``op_version.cc``'s default.

16x8 ops (int16 activations, int8 weights) mostly keep low versions there: CONV_2D,
DEPTHWISE_CONV_2D and FULLY_CONNECTED only test int16 *weights* (never written), so a 16x8
conv is version 1 like the float one and its int64 bias is what selects the kernel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from exporter.tflite.ir import Graph, Operator, Tensor


@dataclass(frozen=True)
class _Signature:
    """What ``op_version.cc`` looks at: the op's tensors and options."""

    op: Operator
    inputs: list[Tensor | None]  # None: an omitted optional input (-1 in the file)
    outputs: list[Tensor]

    def in_type(self, i: int) -> str | None:
        t = self.inputs[i] if i < len(self.inputs) else None
        return t.dtype if t is not None else None

    def out_type(self, i: int = 0) -> str:
        return self.outputs[i].dtype

    def rank(self, i: int = 0) -> int:
        t = self.inputs[i]
        return len(t.shape) if t is not None else 0

    def option(self, name: str, default: object = None) -> object:
        return self.op.options.get(name, default)

    def is_int8(self) -> bool:
        """inputs[0], inputs[1] and outputs[0] all int8: the full-integer kernel."""
        return self.in_type(0) == self.in_type(1) == self.out_type() == "int8"

    def is_hybrid(self) -> bool:
        """float32 activations with an int8 weight."""
        return (self.in_type(0), self.in_type(1), self.out_type()) == ("float32", "int8", "float32")

    def broadcast_above_4d(self) -> bool:
        """``NeedBroadcastForBinaryInputs && GetInputMaxDims > 4``."""
        a, b = self.inputs[0], self.inputs[1]
        if a is None or b is None or a.shape == b.shape:
            return False
        return max(len(t.shape) for t in self.inputs if t is not None) > 4


def _per_channel(t: Tensor | None, dim_size: int) -> bool:
    return t is not None and bool(t.scales) and len(t.scales) == dim_size


def _conv_2d(s: _Signature) -> int:
    x, w = s.inputs[0], s.inputs[1]
    if x is not None and w is not None and x.shape and x.shape[3] != w.shape[3]:
        return 6  # grouped convolution
    if s.is_int8():
        return 3
    if s.is_hybrid():
        return 5 if _per_channel(w, w.shape[0]) else 2
    return 1


def _depthwise_conv_2d(s: _Signature) -> int:
    w = s.inputs[1]
    if s.is_hybrid():
        return 6 if _per_channel(w, w.shape[3]) else 4
    if s.is_int8():
        return 3
    if s.option("dilation_w_factor", 1) != 1 or s.option("dilation_h_factor", 1) != 1:
        return 2
    return 1


def _fully_connected(s: _Signature) -> int:
    w = s.inputs[1]
    per_channel = w is not None and w.scales is not None and len(w.scales) > 1
    if s.is_hybrid() and per_channel and len(w.scales) == w.shape[0]:
        return 12
    if w is not None and w.sparsity is not None:
        return 8
    if len(s.inputs) == 2:
        return 6
    if s.option("keep_num_dims", False):
        return 5
    if s.is_int8():
        return 4
    if s.is_hybrid():
        return 9 if s.option("asymmetric_quantize_inputs", False) else 3
    if s.option("weights_format", "DEFAULT") != "DEFAULT":
        return 2
    return 1


def _mul(s: _Signature) -> int:
    if s.in_type(0) == "int64":
        return 5
    if s.in_type(0) == "int16":
        return 4  # quantized int16 inputs; the unquantized int16 variant (7) is never written
    a, b, out = s.inputs[0], s.inputs[1], s.outputs[0]
    scaled = a is not None and b is not None and a.scales and b.scales and out.scales
    if scaled and a.scales[0] * b.scales[0] / out.scales[0] >= 1.0:
        return 3
    return 2 if s.in_type(0) == "int8" else 1


def _transpose(s: _Signature) -> int:
    if s.rank() > 5:
        return 6
    if s.in_type(0) == "int16":
        return 5
    if s.rank() > 4:
        return 4
    if s.in_type(0) == "bool":
        return 3
    return 2 if s.in_type(0) == "int8" else 1


def _transpose_conv(s: _Signature) -> int:
    # Inputs: output shape, weights, input, optional bias.
    if s.option("fused_activation_function", "NONE") != "NONE":
        return 4
    if len(s.inputs) == 4 and s.inputs[3] is not None:
        return 3
    return 2 if s.in_type(1) == "int8" else 1


def _slice(s: _Signature) -> int:
    if s.rank() > 4:
        return 5
    if s.in_type(0) == "int16":
        return 4
    return 2 if s.in_type(0) == "int8" else 1


def _split(s: _Signature) -> int:
    # SPLIT's data is input 1 (input 0 is the axis).
    return {"int16": 4, "int32": 3, "int8": 2}.get(s.in_type(1) or "", 1)


def _strided_slice(s: _Signature) -> int:
    if s.option("offset", False):
        return 8
    if s.option("ellipsis_mask", 0) or s.option("new_axis_mask", 0):
        return 6
    if s.rank() > 4:
        return 4
    return 2 if s.in_type(0) == "int8" else 1


def _gather(s: _Signature) -> int:
    if s.in_type(1) == "int16":
        return 6
    if s.option("batch_dims", 0):
        return 5
    if s.in_type(0) == "int16":
        return 4
    if s.in_type(0) == "bool":
        return 3
    return 2 if s.in_type(0) == "int8" else 1


def _dequantize(s: _Signature) -> int:
    if s.in_type(0) in ("int16", "float16"):
        return 3
    if s.in_type(0) != "int8":
        return 1
    x = s.inputs[0]
    scales = x.scales or []
    per_channel = len(scales) > 1 and len(scales) == x.shape[x.quantized_dimension]
    return 5 if per_channel else 2


def _quantize(s: _Signature) -> int:
    out = s.outputs[0]
    scales = out.scales or []
    if len(scales) > 1 and len(scales) == out.shape[out.quantized_dimension]:
        return 3
    return 2 if out.dtype == "int16" else 1


def _abs(s: _Signature) -> int:
    if s.in_type(0) == "int32":
        return 5
    return 2 if s.in_type(0) in ("int8", "uint8") else 1


def _resize_bilinear(s: _Signature) -> int:
    if s.in_type(0) == "int16":
        return 4
    if s.option("half_pixel_centers", False):
        return 3
    return 2 if s.in_type(0) == "int8" else 1


def _resize_nearest(s: _Signature) -> int:
    if s.in_type(0) == "int16":
        return 4
    if s.option("half_pixel_centers", False) or s.option("align_corners", False):
        return 3
    return 2 if s.in_type(0) == "int8" else 1


def _maximum_minimum(s: _Signature) -> int:
    if s.in_type(0) == s.out_type() == "int16":
        return 4
    if s.broadcast_above_4d():
        return 3
    return 2 if s.in_type(0) == "int8" else 1


def _add(s: _Signature) -> int:
    if s.in_type(0) == "int64":
        return 4
    if s.in_type(0) == s.out_type() == "int16" and not s.option("pot_scale_int16", True):
        return 3
    return 2 if s.in_type(0) == "int8" else 1


def _sub(s: _Signature) -> int:
    if s.in_type(0) == s.out_type() == "int16" and not s.option("pot_scale_int16", True):
        return 5
    if s.in_type(0) == "int64":
        return 4
    if s.broadcast_above_4d():
        return 3
    return 2 if s.in_type(0) == "int8" else 1


def _div(s: _Signature) -> int:
    return 2 if s.broadcast_above_4d() else 1


def _batch_matmul(s: _Signature) -> int:
    if s.in_type(0) == "int8":
        return 2
    if s.is_hybrid() and s.option("asymmetric_quantize_inputs", False):
        return 4
    return 1


def _pad(s: _Signature) -> int:
    if s.rank() > 4:
        return 4
    if s.in_type(0) == "int16":
        return 3
    return 2 if s.in_type(0) == "int8" else 1


def _int8_is_2(s: _Signature) -> int:
    return 2 if s.in_type(0) == "int8" else 1


def _int16_is_3(s: _Signature) -> int:
    """int16 -> 3, int8 -> 2 (pooling, TANH / LOGISTIC: int16 in and out)."""
    if s.in_type(0) == "int16":
        return 3
    return _int8_is_2(s)


def _relu(s: _Signature) -> int:
    if s.in_type(0) == "int16":
        return 3
    return _int8_or_uint8_is_2(s)


def _leaky_relu(s: _Signature) -> int:
    return 2 if s.in_type(0) == "int16" else 1


def _int8_or_uint8_is_2(s: _Signature) -> int:
    return 2 if s.in_type(0) in ("int8", "uint8") else 1


_RULES: dict[str, Callable[[_Signature], int]] = {
    "CONV_2D": _conv_2d,
    "DEPTHWISE_CONV_2D": _depthwise_conv_2d,
    "FULLY_CONNECTED": _fully_connected,
    "MUL": _mul,
    "TRANSPOSE": _transpose,
    "TRANSPOSE_CONV": _transpose_conv,
    "SLICE": _slice,
    "SPLIT": _split,
    "STRIDED_SLICE": _strided_slice,
    "GATHER": _gather,
    "DEQUANTIZE": _dequantize,
    "QUANTIZE": _quantize,
    "ABS": _abs,
    "RELU": _relu,
    "LEAKY_RELU": _leaky_relu,
    "RESIZE_BILINEAR": _resize_bilinear,
    "RESIZE_NEAREST_NEIGHBOR": _resize_nearest,
    "MAXIMUM": _maximum_minimum,
    "MINIMUM": _maximum_minimum,
    "ADD": _add,
    "SUB": _sub,
    "DIV": _div,
    "BATCH_MATMUL": _batch_matmul,
    "PAD": _pad,
    "PADV2": _pad,
    # One case in op_version.cc each: int16 input -> 3, int8 -> 2.
    **dict.fromkeys(
        (
            "MAX_POOL_2D",
            "AVERAGE_POOL_2D",
            "TANH",
            "LOGISTIC",
            "CONCATENATION",
            "SOFTMAX",
            "MEAN",
            "REDUCE_MAX",
            "REDUCE_MIN",
            "RELU6",
        ),
        _int16_is_3,
    ),
    # int8 input -> 2 (the 16x8 path keeps these in float, so int16 cannot reach them).
    **dict.fromkeys(
        (
            "GELU",
            "SUM",
            "EXP",
            "LOG",
            "REDUCE_PROD",
        ),
        _int8_is_2,
    ),
}


def op_version(op: Operator, graph: Graph) -> int:
    """The operator-code version TFLite assigns ``op`` for its tensors and options in ``graph``."""
    rule = _RULES.get(op.op)
    if rule is None:
        return 1
    sig = _Signature(
        op,
        [graph.tensors[i] if i is not None else None for i in op.inputs],
        [graph.tensors[o] for o in op.outputs],
    )
    return rule(sig)
