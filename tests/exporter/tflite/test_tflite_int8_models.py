"""Whole-model int8: ORT on the QDQ model vs LiteRT on our full-integer TFLite, sizes, uint8 input."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from int8_nets import MobileNetV2Small, SeedCNNValid
from int8_testutil import TfliteRunner, qdq_model, smooth_images
from nets import build

from exporter.quantize.onnx_int8 import QuantSettings, quantize_onnx
from exporter.tflite import convert_model, convert_onnx_file, describe_tflite
from tests.helpers import randomize_batchnorm

CHW = (3, 32, 32)
N_EVAL = 1000
MEAN, STD = (0.5, 0.45, 0.4), (0.25, 0.22, 0.2)


def _ort(path, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _net(name: str) -> torch.nn.Module:
    if name == "mobilenetv2_small":
        return randomize_batchnorm(MobileNetV2Small())
    if name == "seed_valid":
        torch.manual_seed(0)
        return SeedCNNValid().eval()
    return build(name)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, tuple]:
    """name -> (fp32 ONNX, QDQ ONNX), calibrated on 200 smooth images."""
    calib = smooth_images(200, CHW, seed=1)
    out = {}
    for name in ("seed", "mobilenetv2", "mobilenetv2_small"):
        root = tmp_path_factory.mktemp(name)
        out[name] = qdq_model(_net(name), CHW, root, calib=calib)
    return out


@pytest.fixture(scope="module")
def eval_images() -> np.ndarray:
    return smooth_images(N_EVAL, CHW, seed=2)


@pytest.mark.parametrize("name", ["seed", "mobilenetv2"])
def test_int8_model_agrees_with_ort(name, models, eval_images, tmp_path):
    _, int8 = models[name]
    result = convert_onnx_file(int8, tmp_path / "m.tflite")
    assert result.precision == "int8" and result.float_fallback_ops == []
    assert result.transpose_count == 0 and "TRANSPOSE" not in result.op_counts
    data = result.path.read_bytes()
    ref = _ort(int8, eval_images)
    got = TfliteRunner(data, "builtin")(eval_images)
    agree = float((got.argmax(1) == ref.argmax(1)).mean())
    lsb = float(
        onnx.numpy_helper.to_array(
            next(t for t in onnx.load(str(int8)).graph.initializer if t.name == "logits_scale")
        )
    )
    max_lsb = float(np.abs(got - ref).max()) / lsb
    assert agree >= 0.995, agree
    assert max_lsb <= 4.01, max_lsb
    # The XNNPACK delegate's int8 kernels agree with the builtin ones on a subset.
    xnn = TfliteRunner(data, "xnnpack")(eval_images[:200])
    assert float((xnn.argmax(1) == got[:200].argmax(1)).mean()) >= 0.995
    assert float(np.abs(xnn - got[:200]).max()) / lsb <= 2.01


@pytest.mark.parametrize(("name", "limit"), [("seed", 0.27), ("mobilenetv2_small", 0.35)])
def test_int8_size(name, limit, models, tmp_path):
    fp32, int8 = models[name]
    f = convert_onnx_file(fp32, tmp_path / "f.tflite")
    q = convert_onnx_file(int8, tmp_path / "q.tflite")
    assert q.bytes <= limit * f.bytes, (q.bytes, f.bytes, q.bytes / f.bytes)
    info = describe_tflite(q.path)
    weights = [t for t in info["tensors"] if t["buffer_bytes"] and t["dtype"] == "int8"]
    for t in weights:
        qp = t["quantization"]
        assert len(qp["scales"]) == len(qp["zero_points"]) > 0 and set(qp["zero_points"]) == {0}
        axis = qp["quantized_dimension"]
        assert len(qp["scales"]) in (1, t["shape"][axis])


def test_int8_layouts_and_bias(models, tmp_path):
    """quantized_dimension 0 for OHWI / FC filters, 3 for depthwise; biases int32 s_in * s_w."""
    _, int8 = models["mobilenetv2"]
    data, stats = convert_model(onnx.load(str(int8)))
    info = describe_tflite(data)
    by_name = {t["name"]: t for t in info["tensors"]}
    dims = {
        t["quantized_dimension"]
        for t in (
            x["quantization"] for x in info["tensors"] if x["buffer_bytes"] and x["dtype"] == "int8"
        )
    }
    assert dims == {0, 3}
    for t in info["tensors"]:
        if t["dtype"] == "int32" and t["buffer_bytes"] and "quantization" in t:
            assert set(t["quantization"]["zero_points"]) == {0}
    assert stats["precision"] == "int8" and stats["io_dtype"] == "float32"
    assert by_name[info["inputs"][0]]["dtype"] == "float32"


def test_int8_io(models, eval_images):
    _, int8 = models["seed"]
    data, stats = convert_model(onnx.load(str(int8)), io_dtype="int8")
    assert stats["io_dtype"] == "int8"
    info = describe_tflite(data)
    (inp,), (out,) = info["input_details"], info["output_details"]
    assert inp["dtype"] == out["dtype"] == "int8" and inp["shape"] == [1, 32, 32, 3]
    model = onnx.load(str(int8))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    assert inp["scale"] == pytest.approx(float(inits["input_scale"]))
    assert inp["zero_point"] == int(inits["input_zero_point"])
    assert out["scale"] == pytest.approx(float(inits["logits_scale"]))
    assert out["zero_point"] == int(inits["logits_zero_point"])
    ref = _ort(int8, eval_images[:100])
    got = TfliteRunner(data, "builtin")(eval_images[:100])
    assert float((got.argmax(1) == ref.argmax(1)).mean()) >= 0.99
    float_io = describe_tflite(convert_model(model)[0])["input_details"][0]
    assert float_io["dtype"] == "float32" and float_io["scale"] is None


def _pixels(n: int, seed: int) -> np.ndarray:
    """uint8 NHWC camera-like images."""
    img = smooth_images(n, CHW, seed) * 0.15 + 0.5
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def _normalized(p: np.ndarray) -> np.ndarray:
    x = (p.astype(np.float32) / 255 - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


@pytest.mark.parametrize(
    ("name", "how"), [("seed", "MUL + ADD"), ("seed_valid", "folded into the first CONV_2D")]
)
def test_uint8_pixels(name, how, tmp_path):
    fp32 = tmp_path / "fp32.onnx"
    from exporter.onnx.export import export_onnx

    export_onnx(_net(name), CHW, fp32)
    int8 = tmp_path / "int8.onnx"
    quantize_onnx(
        fp32,
        int8,
        QuantSettings(),
        calib_inputs=_normalized(_pixels(200, 3)),
        cache=tmp_path / "calib.json",
    )
    model = onnx.load(str(int8))
    raw, stats = convert_model(model, io_dtype="uint8", normalization=(MEAN, STD))
    assert how in stats["normalization"] and stats["io_dtype"] == "uint8"
    assert stats["float_fallback_ops"] == []
    inp = describe_tflite(raw)["input_details"][0]
    assert (inp["dtype"], inp["shape"], inp["scale"], inp["zero_point"]) == (
        "uint8",
        [1, 32, 32, 3],
        1.0,
        0,
    )
    ref_model, _ = convert_model(model)
    p = _pixels(N_EVAL, 4)
    got = TfliteRunner(raw, "builtin")(p)
    ref = TfliteRunner(ref_model, "builtin")(_normalized(p))
    agree = float((got.argmax(1) == ref.argmax(1)).mean())
    assert agree >= 0.995, agree
    xnn = TfliteRunner(raw, "xnnpack")(p[:100])
    assert float((xnn.argmax(1) == got[:100].argmax(1)).mean()) >= 0.99


def test_io_dtype_errors(models):
    fp32, int8 = models["seed"]
    with pytest.raises(ValueError, match="normalization"):
        convert_model(onnx.load(str(int8)), io_dtype="uint8")
    with pytest.raises(ValueError, match="QDQ"):
        convert_model(onnx.load(str(fp32)), io_dtype="int8")
    with pytest.raises(ValueError, match="io_dtype"):
        convert_model(onnx.load(str(int8)), io_dtype="int4")
    data, stats = convert_model(onnx.load(str(fp32)))
    assert stats["precision"] == "fp32" and stats["float_fallback_ops"] == []


@pytest.mark.parametrize(
    ("name", "delegate", "fallback"),
    # MixedNet's head HardSwish + global mean are float in the QDQ model itself (ORT does not
    # quantize them), so they stay float here too; for XNNPACK, which has no int8 HARD_SWISH,
    # the other two run in float between DEQUANTIZE and QUANTIZE as well.
    [
        ("resnet", "xnnpack", []),
        ("mixed", "none", ["HARD_SWISH", "MEAN"]),
        ("mixed", "xnnpack", ["HARD_SWISH"] * 3 + ["MEAN"]),
    ],
)
def test_other_nets_int8(name, delegate, fallback, tmp_path):
    _, int8 = qdq_model(_net(name), CHW, tmp_path, calib=smooth_images(50, CHW, seed=1))
    result = convert_onnx_file(int8, tmp_path / "m.tflite", delegate=delegate)
    assert result.float_fallback_ops == fallback
    x = smooth_images(100, CHW, seed=2)
    ref = _ort(int8, x)
    lsb = float(
        onnx.numpy_helper.to_array(
            next(t for t in onnx.load(str(int8)).graph.initializer if t.name == "logits_scale")
        )
    )
    for resolver in ("xnnpack", "builtin"):
        got = TfliteRunner(result.path.read_bytes(), resolver)(x)
        assert float((got.argmax(1) == ref.argmax(1)).mean()) >= 0.99
        assert float(np.abs(got - ref).max()) / lsb <= 2.01


def _fully_accelerated(data: bytes) -> bool:
    """Whether LiteRT's CPU accelerator (XNNPACK) takes every op of the model."""
    compiled_model = pytest.importorskip(
        "ai_edge_litert.compiled_model", reason="the CompiledModel API is ai-edge-litert's only"
    )
    return compiled_model.CompiledModel.from_buffer(data).is_fully_accelerated()


@pytest.mark.parametrize("io_dtype", ["float32", "int8"])
@pytest.mark.parametrize("name", ["seed", "mobilenetv2", "mobilenetv2_small"])
def test_int8_models_run_on_xnnpack(name, io_dtype, models):
    """XNNPACK takes a per-tensor int8 tensor only with quantized_dimension 0; ONNX's default
    axis (1) once made every int8 op fall back to the builtin kernels, 4x slower."""
    _, int8 = models[name]
    data, _ = convert_model(onnx.load(str(int8)), io_dtype=io_dtype)
    for t in describe_tflite(data)["tensors"]:
        q = t.get("quantization")
        if q and len(q["scales"]) == 1:
            assert q["quantized_dimension"] == 0, t["name"]
    assert _fully_accelerated(data)
