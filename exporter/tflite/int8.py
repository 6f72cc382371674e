"""Float TFLite graph annotated with QDQ parameters -> full-integer int8 graph.

Runs after the float passes (so BatchNorm, bias adds and activations are already folded). Each
operator is lowered by one small rule keyed by its TFLite op code:

* weighted ops (CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, TRANSPOSE_CONV): per-channel
  symmetric int8 filters, int32 bias (scale s_in * s_w), output with the ONNX parameters;
* ops with free output parameters (ADD, MUL, MEAN, HARD_SWISH, RELU, ...): ONNX parameters;
* ops whose int8 kernel works on raw integers (MAX_POOL_2D, AVERAGE_POOL_2D, RESHAPE, PAD,
  MAXIMUM, ...): the output takes the input's parameters, as the TFLite spec requires;
* SOFTMAX / LOGISTIC / TANH: the fixed output parameters TFLite's kernels demand;
* CONCATENATION: inputs whose parameters differ from the output's are requantized first.

Anything else, or an op whose parameters are unknown (ONNX left it in float), runs in float
between a DEQUANTIZE and a QUANTIZE and is listed in ``float_fallback_ops``.

For an XNNPACK target (``delegate="xnnpack"``) the int8 ops XNNPACK has no kernel for run in
float too (HARD_SWISH, GELU, a padded AVERAGE_POOL_2D: XNNPACK takes the DEQUANTIZE, the float
op and the QUANTIZE, so the model stays one delegate partition), and an unpadded
AVERAGE_POOL_2D becomes the DEPTHWISE_CONV_2D XNNPACK runs in int8.

The same rules write the 16x8 scheme (``act_dtype="int16"``): int16 activations with zero
point 0, the same int8 weights, int64 biases, the int16 fixed output parameters, and ADD/SUB
with general (not power-of-two) scales; only ops whose LiteRT kernel takes int16 are lowered
(``INT16_OPS``), the rest fall back to float like int8's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from exporter.errors import ConversionError
from exporter.tflite import quant
from exporter.tflite.ir import Graph, Operator
from exporter.tflite.passes import remove_dead

IO_DTYPES = ("float32", "int8", "uint8")
ACT_DTYPES = ("int8", "int16")


@dataclass
class Int8Report:
    float_fallback_ops: list[str] = field(default_factory=list)
    normalization: str | None = None  # how uint8 pixels are normalized, when io_dtype is uint8


class _Quantizer:
    def __init__(self, graph: Graph, act: str = "int8", delegate: str = "xnnpack"):
        self.g = graph
        self.act = act  # activation dtype: "int8" or "int16" (16x8)
        self.xnnpack = act == "int8" and delegate == "xnnpack"  # pick encodings XNNPACK runs
        self.ops: list[Operator] = []  # the rewritten operator list, in execution order
        self._int8_copy: dict[str, str] = {}
        self._float_copy: dict[str, str] = {}
        self.report = Int8Report()

    # ----- tensor queries ----------------------------------------------------------------
    def is_const(self, name: str | None) -> bool:
        return name is not None and self.g.tensors[name].is_const

    def params(self, name: str) -> quant.QParams | None:
        return quant.params_of(self.g.tensors[name])

    def live(self, op: Operator) -> list[int]:
        """Indices of the op's activation (non-constant) inputs."""
        return [i for i, n in enumerate(op.inputs) if n is not None and not self.is_const(n)]

    def known(self, op: Operator, indices: Sequence[int] | None = None) -> bool:
        idx = self.live(op) if indices is None else indices
        return all(self.params(op.inputs[i]) is not None for i in idx)  # type: ignore[arg-type]

    # ----- emitting ----------------------------------------------------------------------
    def add(self, op: str, inputs: list[str | None], outputs: list[str], **options: object) -> None:
        self.ops.append(Operator(op, list(inputs), list(outputs), dict(options)))

    def int8(self, name: str) -> str:
        """``name`` as an activation-typed (int8 / int16) tensor, quantizing a float value
        (fallback output) once."""
        t = self.g.tensors[name]
        if t.dtype == self.act:
            return name
        if name not in self._int8_copy:
            q = self.g.add_tensor(f"{name}_{self.act}", t.shape, self.act)
            quant.set_params(self.g.tensors[q], self.params(name))
            self.add("QUANTIZE", [name], [q])
            self._int8_copy[name] = q
        return self._int8_copy[name]

    def float(self, name: str) -> str:
        """``name`` as a float tensor, dequantizing an int8 value once."""
        t = self.g.tensors[name]
        if t.dtype == "float32":
            return name
        if name not in self._float_copy:
            f = self.g.add_tensor(f"{name}_float", t.shape, "float32")
            self.add("DEQUANTIZE", [name], [f])
            self._float_copy[name] = f
        return self._float_copy[name]

    def requantized(self, name: str, params: quant.QParams) -> str:
        """int8 ``name`` re-expressed with ``params`` (a QUANTIZE int8 -> int8) when they differ."""
        name = self.int8(name)
        if self.params(name) is not None and params.same_as(self.params(name)):
            return name
        out = self.g.add_tensor(f"{name}_requantized", self.g.tensors[name].shape, self.act)
        quant.set_params(self.g.tensors[out], params)
        self.add("QUANTIZE", [name], [out])
        return out

    def stored(self, hint: str, data: np.ndarray, params: quant.QParams) -> str:
        """A new constant holding already-quantized ``data`` (the float original is dropped by
        remove_dead once nothing reads it)."""
        name = self.g.add_const(f"{hint}_q", data, str(data.dtype))
        quant.set_params(self.g.tensors[name], params)
        return name

    def const(self, name: str, value: np.ndarray, params: quant.QParams) -> str:
        """A float constant operand quantized to the activation type with ``params``."""
        return self.stored(name, quant.quantize_array(value, params, self.act), params)

    def finish(self, op: Operator, out_params: quant.QParams | None = None) -> None:
        """Make the op's activation inputs int8 and its output int8 (with ``out_params`` if given)."""
        for i in self.live(op):
            op.inputs[i] = self.int8(op.inputs[i])  # type: ignore[arg-type]
        out = self.g.tensors[op.outputs[0]]
        if out_params is not None:
            quant.set_params(out, out_params)
        out.dtype = self.act
        self.ops.append(op)

    def fallback(self, op: Operator) -> None:
        for i in self.live(op):
            op.inputs[i] = self.float(op.inputs[i])  # type: ignore[arg-type]
        self.report.float_fallback_ops.append(op.op)
        self.ops.append(op)


Rule = Callable[[_Quantizer, Operator], bool]

_BIAS_INDEX = {"TRANSPOSE_CONV": 3}
_INPUT_INDEX = {"TRANSPOSE_CONV": 2}


def _weighted(q: _Quantizer, op: Operator) -> bool:
    x_i, w_i = _INPUT_INDEX.get(op.op, 0), 1
    b_i = _BIAS_INDEX.get(op.op, 2)
    x, w = op.inputs[x_i], op.inputs[w_i]
    if x is None or w is None or not q.is_const(w) or not q.known(op, [x_i]):
        return False
    out = q.params(op.outputs[0])
    if out is None or len(q.live(op)) != 1:
        return False
    w_q, w_params = quant.symmetric_per_channel(q.g.const(w), quant.WEIGHT_CHANNEL_AXIS[op.op])
    op.inputs[w_i] = q.stored(w, w_q, w_params)
    bias = op.inputs[b_i] if len(op.inputs) > b_i else None
    if bias is not None:
        b_params = quant.bias_params(q.params(x).scale, w_params)  # type: ignore[union-attr]
        # 16x8 kernels accumulate in int64 and read an int64 bias (the 16x8 spec).
        b_dtype = "int64" if q.act == "int16" else "int32"
        b_q = quant.quantize_bias(q.g.const(bias), b_params, b_dtype)
        op.inputs[b_i] = q.stored(bias, b_q, b_params)
    q.finish(op, out)
    return True


def _own_output(q: _Quantizer, op: Operator) -> bool:
    """Kernels that rescale between arbitrary input and output parameters."""
    out = q.params(op.outputs[0])
    if out is None or not q.known(op):
        return False
    for i, name in enumerate(op.inputs):
        value = q.g.const(name)
        if value is not None and q.g.tensors[name].dtype == "float32":  # type: ignore[index]
            op.inputs[i] = q.const(name, value, quant.minmax_params(value, q.act))  # type: ignore[arg-type]
    if q.act == "int16" and op.op in ("ADD", "SUB"):
        # ONNX scales are arbitrary: the general int16 kernel, not the power-of-two one.
        op.options["pot_scale_int16"] = False
    q.finish(op, out)
    return True


def _input_params(q: _Quantizer, op: Operator) -> bool:
    """Kernels that move or compare raw integers: output (and constants) share input 0's params."""
    src = op.inputs[0]
    if src is None or q.is_const(src) or q.params(src) is None or not q.known(op):
        return False
    params = q.params(src)
    assert params is not None
    for i in q.live(op)[1:]:  # e.g. both operands of MAXIMUM must use the same parameters
        op.inputs[i] = q.requantized(op.inputs[i], params)  # type: ignore[arg-type]
    for i, name in enumerate(op.inputs):
        value = q.g.const(name)
        if value is not None and q.g.tensors[name].dtype == "float32":  # type: ignore[index]
            op.inputs[i] = q.const(name, value, params)  # type: ignore[arg-type]
    q.finish(op, params)
    return True


def _fixed_output(q: _Quantizer, op: Operator) -> bool:
    if not q.known(op):
        return False
    fixed = quant.FIXED_OUTPUT_INT16 if q.act == "int16" else quant.FIXED_OUTPUT
    q.finish(op, fixed[op.op])
    return True


def _pads_nothing(op: Operator, in_hw: Sequence[int]) -> bool:
    if op.options.get("padding") == "VALID":
        return True
    kernel = (op.options["filter_height"], op.options["filter_width"])
    strides = (op.options["stride_h"], op.options["stride_w"])
    return all(
        (-(-size // s) - 1) * s + k <= size
        for size, k, s in zip(in_hw, kernel, strides, strict=True)
    )


def _average_pool(q: _Quantizer, op: Operator) -> bool:
    """XNNPACK has no int8 AVERAGE_POOL_2D but runs int8 DEPTHWISE_CONV_2D: a window that never
    covers padding is a depthwise conv with weights 1/(kh*kw) (stored exactly: 127 at scale
    1/(127*kh*kw)). A padded window must leave the padding out of its count, which only the
    pool does: for XNNPACK it runs in float, elsewhere as the int8 pool."""
    src = op.inputs[0]
    shape = q.g.tensors[src].shape if src is not None else ()
    if not q.xnnpack or len(shape) != 4:
        return _input_params(q, op)
    if not _pads_nothing(op, shape[1:3]):
        return False  # in float between DEQUANTIZE and QUANTIZE, which XNNPACK runs
    if q.is_const(src) or q.params(src) is None:  # type: ignore[arg-type]
        return False
    out = q.g.tensors[op.outputs[0]]
    if quant.params_of(out) is None:
        quant.set_params(out, q.params(src))  # type: ignore[arg-type]
    kh, kw = op.options["filter_height"], op.options["filter_width"]
    weights = np.full((1, kh, kw, shape[3]), 1.0 / (kh * kw), np.float32)
    conv = Operator(
        "DEPTHWISE_CONV_2D",
        [
            src,
            q.g.add_const(f"{op.outputs[0]}_window", weights),
            q.g.add_const(f"{op.outputs[0]}_zero_bias", np.zeros(shape[3], np.float32)),
        ],
        list(op.outputs),
        dict(
            padding=op.options["padding"],
            stride_h=op.options["stride_h"],
            stride_w=op.options["stride_w"],
            depth_multiplier=1,
            dilation_h_factor=1,
            dilation_w_factor=1,
            fused_activation_function=op.options.get("fused_activation_function", "NONE"),
        ),
    )
    return _weighted(q, conv)


def _concatenation(q: _Quantizer, op: Operator) -> bool:
    out = q.params(op.outputs[0])
    if out is None or not q.known(op):
        return False
    # The spec wants one scale for all inputs and the output (XNNPACK refuses others).
    for i, name in enumerate(op.inputs):
        if q.is_const(name):
            op.inputs[i] = q.const(name, q.g.const(name), out)  # type: ignore[arg-type]
        else:
            op.inputs[i] = q.requantized(name, out)  # type: ignore[arg-type]
    q.finish(op, out)
    return True


def _split(q: _Quantizer, op: Operator) -> bool:
    """SPLIT copies integers: every output keeps the parameters of the data (input 1)."""
    data = op.inputs[1]
    params = q.params(data) if data is not None and not q.is_const(data) else None
    if params is None:
        return False
    op.inputs[1] = q.int8(data)
    for name in op.outputs:
        quant.set_params(q.g.tensors[name], params)
        q.g.tensors[name].dtype = q.act
    q.ops.append(op)
    return True


RULES: dict[str, Rule] = {
    **dict.fromkeys(
        ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV"), _weighted
    ),
    **dict.fromkeys(
        (
            "ADD",
            "SUB",
            "MUL",
            "MEAN",
            "SUM",
            "HARD_SWISH",
            "GELU",
            "RSQRT",
            "LEAKY_RELU",
            "PRELU",
            "RELU",
            "RELU6",
            "RELU_N1_TO_1",
        ),
        _own_output,
    ),
    **dict.fromkeys(
        (
            "MAX_POOL_2D",
            "RESHAPE",
            "TRANSPOSE",
            "PAD",
            "PADV2",
            "SLICE",
            "STRIDED_SLICE",
            "GATHER",
            "SQUEEZE",
            "RESIZE_BILINEAR",
            "RESIZE_NEAREST_NEIGHBOR",
            "MAXIMUM",
            "MINIMUM",
            "REDUCE_MAX",
            "REDUCE_MIN",
        ),
        _input_params,
    ),
    "SPLIT": _split,
    "AVERAGE_POOL_2D": _average_pool,
    **dict.fromkeys(quant.FIXED_OUTPUT, _fixed_output),
    "CONCATENATION": _concatenation,
}

#: Ops whose LiteRT kernel has an int16-activation (16x8) variant; others fall back to float.
INT16_OPS = frozenset(
    {
        "CONV_2D",
        "DEPTHWISE_CONV_2D",
        "FULLY_CONNECTED",
        "TRANSPOSE_CONV",
        "ADD",
        "SUB",
        "MUL",
        "MEAN",
        "LEAKY_RELU",
        "RELU",
        "RELU6",
        "MAX_POOL_2D",
        "AVERAGE_POOL_2D",
        "RESHAPE",
        "TRANSPOSE",
        "PAD",
        "PADV2",
        "SLICE",
        "SPLIT",
        "GATHER",
        "SQUEEZE",
        "RESIZE_BILINEAR",
        "RESIZE_NEAREST_NEIGHBOR",
        "MAXIMUM",
        "MINIMUM",
        "REDUCE_MAX",
        "REDUCE_MIN",
        "SOFTMAX",
        "LOGISTIC",
        "TANH",
        "CONCATENATION",
    }
)

#: int8 kernels XNNPACK lacks (LiteRT 2.3). For an XNNPACK target these ops run in float
#: between DEQUANTIZE and QUANTIZE, which XNNPACK takes, so the graph stays one delegate
#: partition; float-then-round is also exactly what onnxruntime computes for the QDQ model.
XNNPACK_FLOAT_OPS = frozenset({"HARD_SWISH", "GELU"})

#: Ops whose int8 output must equal their input's parameters: unknown inputs inherit backwards.
_SAME_PARAMS = {op for op, rule in RULES.items() if rule in (_input_params, _average_pool)}


def _propagate_backwards(graph: Graph) -> None:
    """ORT leaves some values unquantized (e.g. ReduceMean before a quantized Reshape): give a
    value without parameters the parameters of the same-scale op that reads it."""
    for op in reversed(graph.operators):
        if op.op not in _SAME_PARAMS or op.inputs[0] is None:
            continue
        src, dst = graph.tensors[op.inputs[0]], graph.tensors[op.outputs[0]]
        if src.scales is None and not src.is_const and dst.scales is not None:
            quant.set_params(src, quant.params_of(dst))


def _bind_uint8_input(
    q: _Quantizer, name: str, normalization: tuple[Sequence[float], Sequence[float]]
) -> str:
    """Raw uint8 NHWC pixels in; returns the new input tensor's name.

    Folded into the first CONV_2D when it does not pad (exact: the int8 conv then reads the
    pixels shifted by -128, scale 1); otherwise a float MUL + ADD normalizes before QUANTIZE,
    because zero padding in normalized space is pixel 255 * mean_c in raw space and TFLite's
    PAD has one fill value for all channels.
    """
    g = q.g
    t = g.tensors[name]
    a, b = quant.normalization_affine(*normalization)
    if len(t.shape) != 4 or t.shape[-1] != a.size:
        raise ConversionError(
            f"io_dtype uint8 needs an NHWC image input with {a.size} channels; '{name}' is {list(t.shape)}"
        )
    g.rename(name, g.unique_name(f"{name}_normalized"))
    normalized = t.name
    raw = g.add_tensor(name, t.shape, "uint8")
    quant.set_params(g.tensors[raw], quant.RAW_PIXEL_UINT8)
    readers = g.consumers(normalized)
    conv = readers[0] if len(readers) == 1 else None
    if conv is not None and _foldable_first_conv(g, conv, normalized):
        w, bias = quant.fold_input_affine(g.const(conv.inputs[1]), g.const(conv.inputs[2]), a, b)
        conv.inputs[1] = g.add_const(f"{conv.outputs[0]}_filter_normalized", w)
        conv.inputs[2] = g.add_const(f"{conv.outputs[0]}_bias_normalized", bias)
        shifted = g.add_tensor(f"{name}_int8", t.shape, "int8")
        quant.set_params(g.tensors[shifted], quant.as_int8(quant.RAW_PIXEL_UINT8, "uint8"))
        q.add("QUANTIZE", [raw], [shifted])  # uint8 -> int8 with the same reals: q - 128
        conv.inputs[0] = shifted
        q.report.normalization = "folded into the first CONV_2D (no padding)"
    else:
        pixels = g.add_tensor(f"{name}_pixels", t.shape)
        scaled = g.add_tensor(f"{name}_scaled", t.shape)
        q.add("DEQUANTIZE", [raw], [pixels])
        q.add(
            "MUL",
            [pixels, g.add_const(f"{name}_norm_a", a)],
            [scaled],
            fused_activation_function="NONE",
        )
        q.add(
            "ADD",
            [scaled, g.add_const(f"{name}_norm_b", b)],
            [normalized],
            fused_activation_function="NONE",
        )
        q.report.normalization = "float MUL + ADD, then QUANTIZE (first op pads or is not a conv)"
    return raw


def _foldable_first_conv(g: Graph, op: Operator, x: str) -> bool:
    if op.op != "CONV_2D" or op.inputs[0] != x or len(op.inputs) < 3 or op.inputs[2] is None:
        return False
    w = g.const(op.inputs[1])
    if w is None or g.const(op.inputs[2]) is None or w.shape[-1] != g.tensors[x].shape[-1]:
        return False
    if op.options.get("padding") == "VALID":
        return True
    # SAME pads nothing only for a 1x1 window at stride 1.
    return (
        w.shape[1] == w.shape[2] == 1
        and op.options.get("stride_h") == op.options.get("stride_w") == 1
    )


def _bind_inputs(
    q: _Quantizer, io_dtype: str, normalization: tuple[Sequence[float], Sequence[float]] | None
) -> None:
    g = q.g
    for idx, name in enumerate(list(g.inputs)):
        t = g.tensors[name]
        if io_dtype == "float32" or t.dtype != "float32":
            continue  # float inputs are quantized lazily by their first int8 reader
        if t.scales is None:
            raise ConversionError(
                f"input '{name}' has no QuantizeLinear; io_dtype {io_dtype} needs one"
            )
        if io_dtype == "int8":
            t.dtype = "int8"
        else:
            assert normalization is not None
            g.inputs[idx] = _bind_uint8_input(q, name, normalization)


def _bind_outputs(q: _Quantizer, io_dtype: str) -> None:
    g = q.g
    for idx, name in enumerate(list(g.outputs)):
        t = g.tensors[name]
        want = "float32" if io_dtype == "float32" else "int8"
        if t.dtype == want or (want == "int8" and t.scales is None):
            continue  # an output ONNX itself left in float stays float
        g.rename(name, g.unique_name(f"{name}_{t.dtype}"))
        out = g.add_tensor(name, t.shape, want)
        if want == "int8":
            quant.set_params(g.tensors[out], quant.params_of(t))
        q.add("DEQUANTIZE" if want == "float32" else "QUANTIZE", [t.name], [out])
        g.outputs[idx] = out


def quantize_graph(
    graph: Graph,
    io_dtype: str = "float32",
    normalization: tuple[Sequence[float], Sequence[float]] | None = None,
    act_dtype: str = "int8",
    delegate: str = "xnnpack",
) -> tuple[Graph, Int8Report]:
    """Rewrite ``graph`` (float, tensors annotated with QDQ params) as a full-integer graph
    with ``act_dtype`` activations ("int16": the 16x8 scheme, float32 I/O only).

    ``delegate="xnnpack"`` picks int8 encodings LiteRT's XNNPACK delegate runs (see
    ``XNNPACK_FLOAT_OPS`` and ``_average_pool``); "none" keeps every builtin int8 kernel."""
    if io_dtype not in IO_DTYPES:
        raise ValueError(f"io_dtype must be one of {IO_DTYPES}, got {io_dtype!r}")
    if act_dtype not in ACT_DTYPES:
        raise ValueError(f"act_dtype must be one of {ACT_DTYPES}, got {act_dtype!r}")
    if act_dtype == "int16" and io_dtype != "float32":
        raise ValueError("16x8 models take and give float32; use io_dtype='float32'")
    q = _Quantizer(graph, act_dtype, delegate)
    _propagate_backwards(graph)
    _bind_inputs(q, io_dtype, normalization)
    for op in list(graph.operators):
        rule = RULES.get(op.op) if act_dtype == "int8" or op.op in INT16_OPS else None
        in_float = op.keep_float or (q.xnnpack and op.op in XNNPACK_FLOAT_OPS)
        if in_float or rule is None or not rule(q, op):
            q.fallback(op)
    graph.operators = q.ops
    _bind_outputs(q, io_dtype)
    for t in graph.tensors.values():
        if t.dtype == "float32":
            quant.set_params(t, None)  # parameters of values that stayed float were only hints
    return remove_dead(graph), q.report
