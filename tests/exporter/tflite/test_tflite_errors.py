"""User-facing failures: bad files, unsupported nodes, dynamic shapes, registry misuse."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from tflite_testutil import make_model

from exporter.errors import ConversionError, InputFileError, OutputExistsError, UnsupportedOpsError
from exporter.tflite import convert_model, convert_onnx_file
from exporter.tflite.registry import REGISTRY, converter, load_all

X = (1, 3, 7, 5)


@pytest.fixture
def relu_onnx(tmp_path):
    path = tmp_path / "relu.onnx"
    onnx.save(make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": X}, ["y"]), str(path))
    return path


def _big_onnx(tmp_path):
    w = np.random.default_rng(0).standard_normal((16, 3, 3, 3)).astype(np.float32)
    model = make_model(
        [helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3])],
        {"x": X},
        ["y"],
        {"w": w},
    )
    path = tmp_path / "conv.onnx"
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("keep", [0.5, 0.1, 0.97])
def test_truncated_onnx_is_input_file_error_and_writes_nothing(tmp_path, keep):
    src = _big_onnx(tmp_path)
    data = src.read_bytes()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(data[: int(len(data) * keep)])
    out = tmp_path / "out" / "model.tflite"
    with pytest.raises(InputFileError) as err:
        convert_onnx_file(bad, out)
    assert "\n" not in str(err.value) and "bad.onnx" in str(err.value)
    assert not out.exists()
    assert not list(tmp_path.glob("out/*"))  # no temp file left behind either


def test_garbage_and_missing_files(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\xff\xfe not a protobuf at all \x00\x01" * 10)
    with pytest.raises(InputFileError):
        convert_onnx_file(junk, tmp_path / "a.tflite")
    with pytest.raises(InputFileError, match="not found"):
        convert_onnx_file(tmp_path / "missing.onnx", tmp_path / "b.tflite")
    assert not (tmp_path / "a.tflite").exists() and not (tmp_path / "b.tflite").exists()


def test_existing_output_needs_force(tmp_path, relu_onnx):
    out = tmp_path / "o.tflite"
    out.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError):
        convert_onnx_file(relu_onnx, out, force=False)
    assert out.read_bytes() == b"keep me"
    result = convert_onnx_file(relu_onnx, out)
    assert out.read_bytes()[4:8] == b"TFL3" and result.bytes == out.stat().st_size


def test_conversion_error_leaves_no_output(tmp_path):
    nodes = [helper.make_node("Einsum", ["x", "x"], ["y"], equation="nchw,nchw->nchw")]
    path = tmp_path / "e.onnx"
    onnx.save(make_model(nodes, {"x": X}, ["y"]), str(path))
    out = tmp_path / "e.tflite"
    with pytest.raises(UnsupportedOpsError):
        convert_onnx_file(path, out)
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))


def test_all_unsupported_nodes_reported_at_once():
    nodes = [
        helper.make_node(
            "Einsum", ["x", "x"], ["a"], equation="nchw,nchw->nchw", name="first_einsum"
        ),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node(
            "Einsum", ["b", "b"], ["c"], equation="nchw,nchw->nchw", name="second_einsum"
        ),
        helper.make_node("Resize", ["c", "", "sc"], ["y"], mode="cubic", name="cubic_resize"),
    ]
    model = make_model(nodes, {"x": X}, ["y"], {"sc": np.asarray([1, 1, 2, 2], np.float32)})
    with pytest.raises(UnsupportedOpsError) as err:
        convert_model(model)
    names = [o[0] for o in err.value.offenders]
    assert names == ["first_einsum", "second_einsum", "cubic_resize"]
    message = str(err.value)
    assert "first_einsum" in message and "second_einsum" in message and "Einsum x2" in message
    assert "mode=cubic" in message


def test_attribute_limits_are_preflight_reasons():
    nodes = [
        helper.make_node(
            "MaxPool", ["x"], ["a"], kernel_shape=[2, 2], dilations=[2, 2], name="dilated_max"
        ),
        helper.make_node("Pad", ["a", "p"], ["y"], mode="reflect", name="reflect_pad"),
    ]
    model = make_model(nodes, {"x": X}, ["y"], {"p": np.zeros(8, np.int64)})
    with pytest.raises(UnsupportedOpsError) as err:
        convert_model(model)
    reasons = {name: why for name, _, why in err.value.offenders}
    assert "dilations" in reasons["dilated_max"] and "reflect" in reasons["reflect_pad"]


def test_dynamic_spatial_dim_names_the_dim():
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(ConversionError) as err:
        convert_model(model)
    assert "'x'" in str(err.value) and "dim 2" in str(err.value) and "'H'" in str(err.value)


def test_symbolic_batch_is_pinned_to_one():
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 7, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    _, stats = convert_model(model)
    assert stats["inputs"] == {"x": [1, 7, 5, 3]}


def test_duplicate_registration_raises():
    load_all()
    assert "Conv" in REGISTRY
    with pytest.raises(ValueError, match="already has a converter"):
        converter("Conv", emits="again")(lambda node, ctx: None)


def test_bad_input_layout():
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": X}, ["y"])
    with pytest.raises(ValueError, match="input_layout"):
        convert_model(model, input_layout="nwhc")
