"""Operator-code versions: what TFLite's op_version.cc assigns, read back from the file; LiteRT
loads the models, and refuses one whose op version it does not register."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter
from int8_testutil import qdq_model, smooth_images
from nets import build
from onnx import helper
from tflite_testutil import RESOLVERS, make_model

from exporter.quantize.onnx_int8 import QuantSettings, quantize_onnx
from exporter.tflite import convert_model

CHW = (3, 32, 32)
_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}

# Written by hand from GetBuiltinOperatorVersion (tensorflow/lite/tools/versioning/
# op_version.cc), not computed by exporter.tflite.op_versions. Float ops are version 1 except
# RESIZE_BILINEAR with half_pixel_centers (torch's align_corners=False), which is 3 in any
# dtype. int8: CONV_2D / DEPTHWISE_CONV_2D 3 (int8 input, filter, output), FULLY_CONNECTED 4
# (int8 fixed-point kernel), DEQUANTIZE 2 (int8 per-tensor input), QUANTIZE 1 (per-tensor
# output), HARD_SWISH / RESHAPE 1 (no rule), RESIZE_NEAREST_NEIGHBOR 2 (int8, no half-pixel),
# the rest 2 (int8 input). The mixed net keeps one MEAN in float beside its int8 MEANs.
# fp16: DEQUANTIZE 3 (float16 input), the float ops 1. dynamic (hybrid: float32 input and
# output, int8 per-channel filter): CONV_2D 5, DEPTHWISE_CONV_2D 6, FULLY_CONNECTED 12.
# int16x8: CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED fall through to 1 (their int16
# branches test an int16 *filter*), ADD 3 (int16 with pot_scale_int16 false), DEQUANTIZE 3
# (int16 input), QUANTIZE 2 (int16 output), MEAN / PAD 3 (int16 input), RESHAPE 1.
EXPECTED = {
    ("mixed", "fp32"): {
        "CONCATENATION": [1],
        "CONV_2D": [1],
        "FULLY_CONNECTED": [1],
        "HARD_SWISH": [1],
        "LOGISTIC": [1],
        "MEAN": [1],
        "MUL": [1],
        "PAD": [1],
        "RESHAPE": [1],
        "RESIZE_BILINEAR": [3],
        "RESIZE_NEAREST_NEIGHBOR": [1],
    },
    ("mixed", "int8"): {
        "CONCATENATION": [2],
        "CONV_2D": [3],
        "DEQUANTIZE": [2],
        "FULLY_CONNECTED": [4],
        "HARD_SWISH": [1],
        "LOGISTIC": [2],
        "MEAN": [1, 2],
        "MUL": [2],
        "PAD": [2],
        "QUANTIZE": [1],
        "RESHAPE": [1],
        "RESIZE_BILINEAR": [3],
        "RESIZE_NEAREST_NEIGHBOR": [2],
    },
    ("mobilenetv2", "fp32"): {
        "ADD": [1],
        "CONV_2D": [1],
        "DEPTHWISE_CONV_2D": [1],
        "FULLY_CONNECTED": [1],
        "MEAN": [1],
        "PAD": [1],
        "RESHAPE": [1],
    },
    ("mobilenetv2", "int8"): {
        "ADD": [2],
        "CONV_2D": [3],
        "DEPTHWISE_CONV_2D": [3],
        "DEQUANTIZE": [2],
        "FULLY_CONNECTED": [4],
        "MEAN": [2],
        "PAD": [2],
        "QUANTIZE": [1],
        "RESHAPE": [1],
    },
    ("mobilenetv2", "fp16"): {
        "ADD": [1],
        "CONV_2D": [1],
        "DEPTHWISE_CONV_2D": [1],
        "DEQUANTIZE": [3],
        "FULLY_CONNECTED": [1],
        "MEAN": [1],
        "PAD": [1],
        "RESHAPE": [1],
    },
    ("mobilenetv2", "dynamic"): {
        "ADD": [1],
        "CONV_2D": [5],
        "DEPTHWISE_CONV_2D": [6],
        "FULLY_CONNECTED": [12],
        "MEAN": [1],
        "PAD": [1],
        "RESHAPE": [1],
    },
    ("mobilenetv2", "int16x8"): {
        "ADD": [3],
        "CONV_2D": [1],
        "DEPTHWISE_CONV_2D": [1],
        "DEQUANTIZE": [3],
        "FULLY_CONNECTED": [1],
        "MEAN": [3],
        "PAD": [3],
        "QUANTIZE": [2],
        "RESHAPE": [1],
    },
}


def op_versions(data: bytes) -> dict[str, list[int]]:
    """Op name -> versions of its operator codes, read with the schema's own reader."""
    model = schema.Model.GetRootAs(data, 0)
    out: dict[str, list[int]] = {}
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        out.setdefault(_NAMES[code], []).append(oc.Version())
    return {k: sorted(v) for k, v in sorted(out.items())}


def _runs(data: bytes, resolver: str) -> np.ndarray:
    it = Interpreter(model_content=data, experimental_op_resolver_type=RESOLVERS[resolver])
    it.allocate_tensors()
    d = it.get_input_details()[0]
    x = np.random.default_rng(0).standard_normal(d["shape"]).astype(np.float32)
    it.set_tensor(d["index"], x)
    it.invoke()
    y = it.get_tensor(it.get_output_details()[0]["index"])
    assert np.all(np.isfinite(y))
    return y


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict[tuple[str, str], bytes]:
    calib = smooth_images(32, CHW, seed=1)
    out = {}
    for name in ("mixed", "mobilenetv2"):
        fp32, int8 = qdq_model(build(name), CHW, tmp_path_factory.mktemp(name), calib=calib)
        out[name, "fp32"] = convert_model(onnx.load(fp32))[0]
        out[name, "int8"] = convert_model(onnx.load(int8))[0]
        for precision in ("fp16", "dynamic"):
            out[name, precision] = convert_model(onnx.load(fp32), precision=precision)[0]
        wide = quantize_onnx(
            fp32,
            fp32.with_name("int16x8.onnx"),
            QuantSettings(activations="int16"),
            calib_inputs=None,
            cache=fp32.with_name("calib.json"),
        )
        out[name, "int16x8"] = convert_model(onnx.load(wide))[0]
    return out


@pytest.mark.parametrize("key", list(EXPECTED), ids=lambda k: "-".join(k))
def test_versions_follow_op_version_cc(converted, key):
    data = converted[key]
    assert op_versions(data) == EXPECTED[key]
    for resolver in RESOLVERS:
        _runs(data, resolver)


def test_grouped_conv_is_version_6():
    # op_signature.cc: input channels (4) != filter input channels (2) -> grouped -> 6.
    w = np.random.default_rng(0).standard_normal((6, 2, 3, 3)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], group=2, pads=[1, 1, 1, 1])
    data, _ = convert_model(make_model([node], {"x": (1, 4, 7, 5)}, ["y"], {"w": w}))
    assert op_versions(data) == {"CONV_2D": [6]}
    for resolver in RESOLVERS:
        _runs(data, resolver)


def _with_version(data: bytes, op: str, version: int) -> bytes:
    import flatbuffers

    model = schema.ModelT.InitFromPackedBuf(data, 0)
    for oc in model.operatorCodes:
        if _NAMES[max(oc.builtinCode, oc.deprecatedBuiltinCode)] == op:
            oc.version = version
    b = flatbuffers.Builder(len(data) + 1024)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def test_unregistered_op_version_is_refused_at_load(converted):
    """Why versions matter: a runtime without the kernel variant refuses the model up front."""
    data = _with_version(converted["mobilenetv2", "int8"], "CONV_2D", 99)
    with pytest.raises(
        ValueError, match="Didn't find op for builtin opcode 'CONV_2D' version '99'"
    ):
        Interpreter(model_content=data).allocate_tensors()
