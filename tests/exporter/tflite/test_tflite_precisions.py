"""fp16, dynamic-range int8 and 16x8, in both formats, on the plain CNN and the
MobileNetV2-style net (depthwise, residual ADD, ReLU6): each file loads and runs, and agrees
with an independent reference.

* fp16 (TFLite and ONNX) against the fp32 ONNX model in onnxruntime: 1e-2 of the logit range,
  same top-1 on >= 99.5 % of the images.
* dynamic TFLite against onnxruntime running the fp32 graph with the same int8 weights
  (per-channel, max|w|/127) dequantized in its initializers: the hybrid kernels' only other
  error is the on-the-fly 8-bit input quantization; dynamic ONNX against the fp32 model.
* int16x8 TFLite against onnxruntime's run of the same 16x8 QDQ graph, within a few LSB of
  the output's int16 scale (the int8 tests allow one int8 LSB).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from int8_testutil import qdq_model, smooth_images
from nets import build
from onnx import numpy_helper
from tflite_testutil import RESOLVERS

from exporter.onnx.precision import float16_onnx
from exporter.quantize.dynamic import dynamic_onnx
from exporter.quantize.onnx_int8 import QuantSettings, quantize_onnx
from exporter.tflite import convert_model, describe_tflite
from runtime_check.coverage import ops_outside_delegate

CHW = (3, 32, 32)
NETS = ("seed", "mobilenetv2")


def _ort(path_or_model, x: np.ndarray) -> np.ndarray:
    data = path_or_model if isinstance(path_or_model, bytes) else Path(path_or_model).read_bytes()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])


def _litert(data: bytes, x: np.ndarray, resolver: str = "xnnpack") -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=data, experimental_op_resolver_type=RESOLVERS[resolver])
    it.allocate_tensors()
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    out = []
    for img in x.transpose(0, 2, 3, 1):
        it.set_tensor(i["index"], img[None])
        it.invoke()
        out.append(it.get_tensor(o["index"]).copy())
    return np.concatenate(out)


def _weights_quantized(model: onnx.ModelProto) -> bytes:
    """The fp32 graph with each Conv / Gemm weight rounded to symmetric per-output-channel
    int8, as the hybrid kernels store it (computed here independently of the writer)."""
    weights = {n.input[1] for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")}
    transposed = {
        n.input[1]
        for n in model.graph.node
        if n.op_type == "MatMul"
        or (n.op_type == "Gemm" and not any(a.name == "transB" and a.i for a in n.attribute))
    }
    for init in model.graph.initializer:
        if init.name not in weights:
            continue
        w = numpy_helper.to_array(init).astype(np.float64)
        axis = 1 if init.name in transposed else 0
        other = tuple(d for d in range(w.ndim) if d != axis)
        scale = np.abs(w).max(axis=other, keepdims=True) / 127.0
        scale[scale == 0] = 1.0
        q = np.clip(np.rint(w / scale), -127, 127) * scale
        init.CopyFrom(numpy_helper.from_array(q.astype(np.float32), init.name))
    return model.SerializeToString()


@pytest.fixture(scope="module", params=NETS)
def net(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    calib = smooth_images(32, CHW, seed=1)
    fp32, int8 = qdq_model(build(request.param), CHW, root, calib=calib)
    x = smooth_images(200, CHW, seed=2)
    return request.param, root, fp32, x, _ort(fp32, x)


def _agree(got: np.ndarray, ref: np.ndarray, rel: float, top1: float) -> None:
    err = np.abs(got - ref).max() / np.abs(ref).max()
    assert err <= rel, f"max |Δ| is {err:.2e} of the logit range (limit {rel})"
    same = (got.argmax(1) == ref.argmax(1)).mean()
    assert same >= top1, f"top-1 agrees on {same:.1%} (limit {top1:.1%})"


def test_fp16_both_formats_match_fp32(net):
    name, root, fp32, x, ref = net
    data, stats = convert_model(onnx.load(fp32), precision="fp16")
    assert stats["precision"] == "fp16"
    tensors = describe_tflite(data)["tensors"]
    weights = [t for t in tensors if t["buffer_bytes"] and t["dtype"] == "float16"]
    assert weights and not [t for t in tensors if t["buffer_bytes"] and t["dtype"] == "float32"]
    for resolver in RESOLVERS:
        _agree(_litert(data, x, resolver), ref, 1e-2, 0.995)
    half = float16_onnx(fp32, root / "fp16.onnx")
    sess = ort.InferenceSession(str(half), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].type == sess.get_outputs()[0].type == "tensor(float)"
    kinds = {i.data_type for i in onnx.load(half).graph.initializer if i.dims}
    assert onnx.TensorProto.FLOAT16 in kinds and onnx.TensorProto.FLOAT not in kinds
    _agree(_ort(half, x), ref, 1e-2, 0.995)


def test_dynamic_tflite_matches_the_same_int8_weights_in_ort(net):
    name, root, fp32, x, ref = net
    data, stats = convert_model(onnx.load(fp32), precision="dynamic")
    assert stats["precision"] == "dynamic"
    same_weights = _ort(_weights_quantized(onnx.load(fp32)), x)
    for resolver in RESOLVERS:
        # Each layer quantizes its input to 8 bits on the fly: a few input LSB per layer.
        _agree(_litert(data, x, resolver), same_weights, 3e-2, 0.97)
    int8_weights = [t for t in describe_tflite(data)["tensors"] if t["dtype"] == "int8"]
    assert len(int8_weights) == sum(stats["op_counts"].get(op, 0) for op in (
        "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"))  # fmt: skip


def test_dynamic_onnx_runs_close_to_fp32(net):
    name, root, fp32, x, ref = net
    dyn = dynamic_onnx(fp32, root / "dynamic.onnx")
    ops = {n.op_type for n in onnx.load(dyn).graph.node}
    assert {"DynamicQuantizeLinear", "ConvInteger"} <= ops
    _agree(_ort(dyn, x), ref, 5e-2, 0.95)
    # Every Conv / Gemm weight is stored as int8 (plus its int8 zero points), none as float.
    src = onnx.load(fp32)
    weights = {n.input[1] for n in src.graph.node if n.op_type in ("Conv", "Gemm")}
    n_weights = sum(int(np.prod(i.dims)) for i in src.graph.initializer if i.name in weights)
    inits = onnx.load(dyn).graph.initializer
    n_int8 = sum(int(np.prod(i.dims)) for i in inits if i.data_type == onnx.TensorProto.INT8)
    assert n_int8 >= n_weights
    assert not weights & {i.name for i in inits if i.data_type == onnx.TensorProto.FLOAT}


def test_int16x8_tflite_matches_ort_on_the_same_qdq_graph(net):
    name, root, fp32, x, ref = net
    wide = quantize_onnx(
        fp32,
        root / "int16x8.onnx",
        QuantSettings(activations="int16"),
        calib_inputs=None,
        cache=root / "calib.json",
    )
    data, stats = convert_model(onnx.load(wide))
    assert stats["precision"] == "int16x8" and stats["float_fallback_ops"] == []
    tensors = describe_tflite(data)["tensors"]
    acts = [t for t in tensors if t["dtype"] == "int16"]
    assert acts and all(t["quantization"]["zero_points"] == [0] for t in acts)
    biases = [t for t in tensors if t["dtype"] in ("int32", "int64") and "quantization" in t]
    assert biases and {t["dtype"] for t in biases} == {"int64"}
    # The logits' own int16 scale: the tensor of the output's shape the final DEQUANTIZE reads.
    (logits,) = [
        t for t in acts if t["shape"] == list(ref.shape[1:]) or t["shape"] == [1, *ref.shape[1:]]
    ]
    lsb = logits["quantization"]["scales"][0]
    reference = _ort(wide, x)
    for resolver in RESOLVERS:
        got = _litert(data, x, resolver)
        assert np.abs(got - reference).max() <= 4 * lsb
    _agree(reference, ref, 2e-2, 0.99)


def test_coverage_says_which_ops_xnnpack_left(net):
    from ai_edge_litert.interpreter import Interpreter

    name, root, fp32, x, ref = net
    for precision, expected in (("fp32", []), ("fp16", [])):
        it = Interpreter(model_content=convert_model(onnx.load(fp32), precision=precision)[0])
        it.allocate_tensors()
        assert ops_outside_delegate(it) == expected
    data = convert_model(onnx.load(fp32), precision="dynamic")[0]
    it = Interpreter(model_content=data)
    it.allocate_tensors()
    depthwise = convert_model(onnx.load(fp32), precision="dynamic")[1]["op_counts"].get(
        "DEPTHWISE_CONV_2D", 0
    )
    # XNNPACK takes hybrid CONV_2D / FULLY_CONNECTED but not a hybrid DEPTHWISE_CONV_2D.
    assert ops_outside_delegate(it) == ["DEPTHWISE_CONV_2D"] * depthwise
