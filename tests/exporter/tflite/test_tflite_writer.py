"""The flatbuffer writer, describe_tflite, supported_ops and the generated doc."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter
from onnx import helper
from tflite_testutil import make_model

from exporter.tflite import convert_model, describe_tflite, docs, supported_ops
from exporter.tflite import layout as L
from exporter.tflite.ir import Graph
from exporter.tflite.registry import REGISTRY
from exporter.tflite.writer import append_metadata, serialize


def _model_bytes() -> bytes:
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["a"], kernel_shape=[1, 1]),
        helper.make_node("HardSwish", ["a"], ["b"]),
        helper.make_node("Conv", ["b", "w"], ["c"], kernel_shape=[1, 1]),
        helper.make_node("Clip", ["c", "lo", "hi"], ["y"]),
    ]
    inits = {"w": np.ones((3, 3, 1, 1), np.float32), "lo": np.float32(0), "hi": np.float32(1)}
    data, _ = convert_model(make_model(nodes, {"x": (1, 3, 7, 5)}, ["y"], inits))
    return data


def test_header_version_buffers_and_opcodes():
    data = _model_bytes()
    assert data[4:8] == b"TFL3"
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(data, 0))
    assert model.version == 3
    assert model.buffers[0].data is None or len(model.buffers[0].data) == 0
    codes = [(oc.builtinCode, oc.deprecatedBuiltinCode) for oc in model.operatorCodes]
    assert len(codes) == len(set(codes)), "operator codes must be deduplicated"
    conv = schema.BuiltinOperator.CONV_2D
    relu01 = schema.BuiltinOperator.RELU_0_TO_1  # > 127: only builtin_code carries it
    assert (conv, conv) in codes and (relu01, 127) in codes
    assert (
        sum(
            1
            for op in model.subgraphs[0].operators
            if model.operatorCodes[op.opcodeIndex].builtinCode == conv
        )
        == 2
    )


def test_constant_buffers_are_16_byte_aligned():
    data = _model_bytes()
    root = schema.Model.GetRootAs(data, 0)
    for i in range(1, root.BuffersLength()):
        buf = root.Buffers(i)
        if buf.DataLength():
            # The vector's payload starts right after its uint32 length prefix.
            start = buf._tab.Vector(buf._tab.Offset(4))
            assert start % 16 == 0
            assert struct.unpack_from("<I", data, start - 4)[0] == buf.DataLength()


def test_describe_tflite(tmp_path):
    data = _model_bytes()
    path = tmp_path / "m.tflite"
    path.write_bytes(data)
    info = describe_tflite(path)
    assert info == describe_tflite(data)
    assert info["ops"] == {"CONV_2D": 2, "HARD_SWISH": 1, "RELU_0_TO_1": 1}
    assert info["inputs"] == ["x"] and info["outputs"] == ["y"]
    assert info["total_bytes"] == len(data)
    by_name = {t["name"]: t for t in info["tensors"]}
    assert by_name["x"]["shape"] == [1, 7, 5, 3] and by_name["x"]["dtype"] == "float32"
    weights = [t for t in info["tensors"] if t["buffer_bytes"] == 3 * 3 * 4]
    assert weights and all("quantization" not in t for t in info["tensors"])


def test_quantization_fields_round_trip():
    g = Graph()
    x = g.add_tensor("x", (1, 4))
    y = g.add_tensor("y", (1, 4))
    g.add_op("RELU", [x], [y])
    g.inputs, g.outputs = [x], [y]
    g.tensors["y"].scales, g.tensors["y"].zero_points = [0.5], [3]
    info = describe_tflite(serialize(g))
    q = {t["name"]: t.get("quantization") for t in info["tensors"]}
    assert (
        q["y"] == {"scales": [0.5], "zero_points": [3], "quantized_dimension": 0} and q["x"] is None
    )


def _zero_point_vector_position(tensor) -> int:
    q = tensor.Quantization()
    field = q._tab.Offset(10)  # zero_point is QuantizationParameters' 4th field (vtable slot 10)
    return q._tab.Vector(field)


def test_identical_quantization_vectors_are_written_once():
    """Per-channel weights and biases carry equal all-zero zero-point vectors; the writer
    shares one copy (an int8 MobileNetV2 loses a sixth of its bytes) and LiteRT reads it."""
    g = Graph()
    x, y, z = (g.add_tensor(n, (1, 8)) for n in "xyz")
    g.add_op("RELU", [x], [y])
    g.add_op("RELU", [y], [z])
    g.inputs, g.outputs = [x], [z]
    for name, scales in (("x", [0.5] * 8), ("y", [0.25] * 8), ("z", [0.25] * 8)):
        t = g.tensors[name]
        t.scales, t.zero_points, t.quantized_dimension = scales, [0] * 8, 1
    data = serialize(g)
    sub = schema.Model.GetRootAs(data, 0).Subgraphs(0)
    tensors = {sub.Tensors(i).Name().decode(): sub.Tensors(i) for i in range(sub.TensorsLength())}
    positions = {n: _zero_point_vector_position(t) for n, t in tensors.items()}
    assert positions["x"] == positions["y"] == positions["z"]
    q = {t["name"]: t["quantization"] for t in describe_tflite(data)["tensors"]}
    assert q["x"]["scales"] == [0.5] * 8 and q["z"]["scales"] == [0.25] * 8
    assert q["y"]["zero_points"] == [0] * 8 and q["y"]["quantized_dimension"] == 1


def _plain(obj):
    """An object-API value as plain lists / dicts / scalars, for equality."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    if hasattr(obj, "__dict__"):
        return {k: _plain(v) for k, v in vars(obj).items()}
    return obj


def _shared_quantized_model() -> bytes:
    g = Graph()
    x, y, z = (g.add_tensor(n, (1, 8)) for n in "xyz")
    g.add_op("RELU", [x], [y])
    g.add_op("RELU", [y], [z])
    g.inputs, g.outputs = [x], [z]
    g.add_const("unused_weight", np.arange(24, dtype=np.float32))
    for name, scales in (("x", [0.5] * 8), ("y", [0.25] * 8), ("z", [0.25] * 8)):
        t = g.tensors[name]
        t.scales, t.zero_points, t.quantized_dimension = scales, [0] * 8, 1
    return serialize(g)


def test_append_metadata_keeps_the_model_and_adds_entries():
    data = _shared_quantized_model()
    entries = {"TFLITE_METADATA": b"M\x00\x01" * 101, "other": b"abc"}
    out = append_metadata(data, entries)
    # Nothing re-packed: the model's bytes are carried over whole, the root is new.
    assert data[8:] in out
    assert len(out) - len(data) - sum(map(len, entries.values())) <= 4 * 8 + 256
    before = _plain(schema.ModelT.InitFromPackedBuf(data, 0))
    after = _plain(schema.ModelT.InitFromPackedBuf(out, 0))
    added = after["buffers"][len(before["buffers"]) :]
    assert [bytes(b["data"]) for b in added] == list(entries.values())
    n = len(before["buffers"])
    assert [(m["name"], m["buffer"]) for m in after["metadata"]] == [
        (b"TFLITE_METADATA", n),
        (b"other", n + 1),
    ]
    for field in ("buffers", "metadata"):
        after[field] = after[field][: len(before[field] or [])] or None
    assert after == before  # every other field of the model, as LiteRT's schema reads it
    sub = schema.Model.GetRootAs(out, 0).Subgraphs(0)
    quantized = [
        sub.Tensors(i) for i in range(sub.TensorsLength()) if sub.Tensors(i).Quantization()
    ]
    assert len(quantized) == 3
    shared = {_zero_point_vector_position(t) for t in quantized}
    assert len(shared) == 1  # the shared quantization vector is still shared
    root = schema.Model.GetRootAs(out, 0)
    for i in range(1, root.BuffersLength()):
        buf = root.Buffers(i)
        assert buf._tab.Vector(buf._tab.Offset(4)) % 16 == 0
    x = np.linspace(-1, 1, 8, dtype=np.float32)[None]
    assert np.array_equal(_invoke(out, x), _invoke(data, x))


def _invoke(data: bytes, x: np.ndarray) -> np.ndarray:
    it = Interpreter(model_content=data)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


def test_append_metadata_refusals():
    data = append_metadata(_shared_quantized_model(), {"TFLITE_METADATA": b"x"})
    with pytest.raises(ValueError, match="already has metadata TFLITE_METADATA"):
        append_metadata(data, {"TFLITE_METADATA": b"y"})
    with pytest.raises(ValueError, match="missing TFL3"):
        append_metadata(b"\0" * 16, {"a": b"y"})


def test_supported_ops_come_from_registry():
    ops = supported_ops()
    assert [op for op, _ in ops] == sorted(REGISTRY)
    assert dict(ops)["Conv"].startswith("CONV_2D")


def test_supported_ops_doc_is_current():
    # Regenerate with: python -m exporter.tflite.docs
    assert docs.DOC_PATH.read_text() == docs.render(), "docs/supported_ops.md is stale"


def test_layout_helpers():
    assert [L.nhwc_axis(a) for a in (0, 1, 2, 3, -1)] == [0, 3, 1, 2, 2]
    assert L.compose(L.NCHW_TO_NHWC, L.NHWC_TO_NCHW) == (0, 1, 2, 3)
    assert L.is_pure_reshape((1, 8, 1, 1), L.NCHW_TO_NHWC) and not L.is_pure_reshape(
        (1, 8, 2, 1), L.NCHW_TO_NHWC
    )
    bias = np.arange(3, dtype=np.float32).reshape(3, 1, 1)
    assert L.broadcast_operand(bias, 4, L.NHWC).shape == (1, 1, 1, 3)
    flat = np.arange(2 * 3 * 4, dtype=np.float32)[None]  # c=2, h=3, w=4
    permuted = L.transpose_const(flat, L.flat_hwc(2, 3, 4))
    np.testing.assert_array_equal(
        permuted.reshape(3, 4, 2), flat.reshape(2, 3, 4).transpose(1, 2, 0)
    )
    w = np.arange(4 * 2 * 3 * 5).reshape(4, 2, 3, 5)
    assert L.conv_weight_ohwi(w).shape == (4, 3, 5, 2) and L.depthwise_weight_1hwo(
        w[:, :1]
    ).shape == (1, 3, 5, 4)
