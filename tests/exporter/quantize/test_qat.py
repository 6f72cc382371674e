"""Quantization-aware fine-tuning: BN folding, the int8 weight grid, pruned zeros, and the
int8-vs-float error it exists to reduce."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from exporter.inputs.data import channel_stats, load_data, stratified_split
from exporter.models.zoo import MobileNetV2Cifar, ResNet8, SeedCNN
from exporter.onnx.export import export_onnx
from exporter.quantize.onnx_int8 import QuantSettings, calibration_cache, quantize_onnx
from exporter.quantize.qat import fold_batchnorms, qat_finetune
from exporter.training.loop import TrainConfig, train
from tests.helpers import randomize_batchnorm


@pytest.mark.parametrize("factory", [ResNet8, MobileNetV2Cifar])
def test_fold_batchnorms_keeps_outputs(factory):
    torch.manual_seed(0)
    model = randomize_batchnorm(factory()).eval()
    x = torch.randn(8, 3, 32, 32)
    before = model(x).detach()
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert fold_batchnorms(model, x) == n_bn
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(model(x).detach(), before, rtol=1e-4, atol=1e-4)


def test_fold_refuses_a_batchnorm_that_does_not_follow_its_conv():
    class Crossed(nn.Module):
        """bn is registered after conv_a but normalizes conv_b's output."""

        def __init__(self):
            super().__init__()
            self.conv_a = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.conv_b = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return self.conv_a(x) + self.bn(self.conv_b(x))

    torch.manual_seed(0)
    model = randomize_batchnorm(Crossed()).eval()
    x = torch.randn(4, 3, 8, 8)
    before = model(x).detach()
    assert fold_batchnorms(model, x) == 0
    assert isinstance(model.bn, nn.BatchNorm2d)
    torch.testing.assert_close(model(x).detach(), before)


@pytest.fixture(scope="module")
def digits():
    ds = load_data("digits")
    tr, _ = stratified_split(ds, 0.2, 0)
    norm = channel_stats(ds)
    torch.manual_seed(0)
    model = SeedCNN(1, (8, 8), 10)
    x = norm.apply(tr.images)
    train(model, x, tr.labels, TrainConfig(epochs=3, lr=0.05))
    return model, x, tr.labels


def _int8_vs_float(model, x, root):
    """Mean |int8 - fp32| logit difference of the model's own ORT QDQ copy, and the largest
    difference between a float weight and its int8 copy in the QDQ model."""
    fp32 = export_onnx(model, (1, 8, 8), root / "fp32.onnx")
    int8 = root / "int8.onnx"
    quantize_onnx(
        fp32,
        int8,
        QuantSettings("minmax", False),
        calib_inputs=x[:256],
        cache=calibration_cache(root, "minmax"),
    )
    outs = []
    for path in (fp32, int8):
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outs.append(sess.run(None, {"input": x[:500]})[0])
    return float(np.abs(outs[0] - outs[1]).mean()), _weight_rounding(fp32, int8)


def _weight_rounding(fp32_path, int8_path) -> float:
    floats = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(fp32_path)).graph.initializer}
    q = onnx.load(str(int8_path))
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    worst = 0.0
    for node in q.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            continue
        source = node.input[0].removesuffix("_quantized")
        if source not in floats or inits[node.input[0]].dtype != np.int8:
            continue
        scale = inits[node.input[1]].reshape(-1, *[1] * (floats[source].ndim - 1))
        worst = max(worst, float(np.abs(inits[node.input[0]] * scale - floats[source]).max()))
    return worst


def test_qat_weights_on_grid_zeros_kept_error_reduced(digits, tmp_path):
    base, x, y = digits
    model = SeedCNN(1, (8, 8), 10)
    model.load_state_dict(base.state_dict())
    with torch.no_grad():  # a pruned layer: its zeros must survive QAT
        w = model.features[3].weight
        w[w.abs() < w.abs().median()] = 0.0
    zeros_before = model.features[3].weight == 0
    (tmp_path / "before").mkdir()
    err_before, rounding_before = _int8_vs_float(model, x, tmp_path / "before")
    assert rounding_before > 1e-4  # trained weights are off the int8 grid

    result = qat_finetune(model, x, y, TrainConfig(epochs=1, lr=0.001), x[:256])
    assert result.weights_simulated == 4 and result.activations_simulated >= 4
    assert len(result.loss) == 1 and np.isfinite(result.loss[0])
    assert bool((model.features[3].weight[zeros_before] == 0).all())
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            w = m.weight.detach().flatten(1)
            steps = w / (w.abs().amax(1, keepdim=True) / 127)
            torch.testing.assert_close(steps, steps.round(), rtol=0, atol=1e-3)
    assert not any(hasattr(m, "parametrizations") for m in model.modules())

    (tmp_path / "after").mkdir()
    err_after, rounding_after = _int8_vs_float(model, x, tmp_path / "after")
    # The quantizer reproduces QAT's weights exactly: only activation rounding is left.
    assert rounding_after < 1e-6, rounding_after
    assert err_after < err_before, (err_before, err_after)


def test_activation_points_follow_the_int8_graph():
    """A conv whose (BN-folded) output feeds an activation is rounded only after it; a conv
    that feeds an Add (the projection of an inverted residual) is rounded itself."""
    from exporter.quantize.qat import _activation_points

    torch.manual_seed(0)
    model = randomize_batchnorm(MobileNetV2Cifar()).eval()
    fold_batchnorms(model, torch.randn(2, 3, 32, 32))
    points = _activation_points(model)
    block = model.features[4].block  # expand conv, ReLU6, depthwise, ReLU6, project conv
    convs = [m for m in block if isinstance(m, nn.Conv2d)]
    acts = [m for m in block if isinstance(m, nn.ReLU6)]
    assert [c in points for c in convs] == [False, False, True]
    assert all(a in points for a in acts)
