import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from exporter.compress import compress
from exporter.compress.channels import prune_channels
from exporter.models.zoo import MobileNetV2Cifar, ResNet8, SeedCNN
from exporter.onnx.export import export_onnx
from exporter.recipe import ChannelSpec, CompressSpec, FinetuneSpec
from tests.helpers import randomize_batchnorm


class ConcatNet(nn.Module):
    def __init__(self, in_channels=3, image_size=(16, 16), num_classes=5):
        super().__init__()
        self.a = nn.Conv2d(in_channels, 16, 3, padding=1)
        self.b = nn.Conv2d(in_channels, 24, 3, padding=1)
        self.bn = nn.BatchNorm2d(40)
        self.dw = nn.Conv2d(40, 40, 3, padding=1, groups=40)
        self.fc = nn.Linear(40, num_classes)

    def forward(self, x):
        y = torch.relu(self.bn(torch.cat([self.a(x), self.b(x)], 1)))
        return self.fc(self.dw(y).mean((2, 3)))


@pytest.mark.parametrize(
    "factory, shape",
    [
        (lambda: SeedCNN(3, (16, 16), 10), (3, 16, 16)),
        (lambda: randomize_batchnorm(ResNet8(3, (16, 16), 10)), (3, 16, 16)),
        (lambda: randomize_batchnorm(MobileNetV2Cifar(3, (32, 32), 10)), (3, 32, 32)),
        (lambda: randomize_batchnorm(ConcatNet()), (3, 16, 16)),
    ],
)
def test_channels_really_removed_and_model_still_exports(factory, shape, tmp_path):
    torch.manual_seed(0)
    model = factory()
    classes = model(torch.zeros(1, *shape)).shape[1]
    res = prune_channels(model, shape, ratio=0.5, round_to=4)
    assert res.params_after < 0.6 * res.params_before
    assert res.macs_after < res.macs_before
    out = model(torch.randn(2, *shape))
    assert out.shape == (2, classes), "the classifier keeps its classes"
    # A smaller *dense* network: every layer's weight tensor physically shrank or stayed.
    assert any(c["after"] < c["before"] for c in res.channels)
    # Dependency-aware: residual/concat/depthwise partners still line up, so the export runs
    # and matches torch.
    export_onnx(model.eval(), shape, tmp_path / "m.onnx")
    x = np.random.default_rng(0).standard_normal((4, *shape)).astype(np.float32)
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x})[0]
    with torch.no_grad():
        assert np.abs(got - model(torch.from_numpy(x)).numpy()).max() < 1e-4


def test_round_to_keeps_multiples():
    torch.manual_seed(0)
    model = randomize_batchnorm(ResNet8(3, (16, 16), 10))
    res = prune_channels(model, (3, 16, 16), ratio=0.4, round_to=8)
    for c in res.channels[:-1]:  # all but the classifier
        assert c["after"] % 8 == 0, c


def test_compress_runs_channels_then_weights():
    torch.manual_seed(0)
    model = SeedCNN(3, (16, 16), 10)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 3, 16, 16)).astype(np.float32)
    y = rng.integers(0, 10, 64)
    spec = CompressSpec(
        channels=ChannelSpec(ratio=0.5, round_to=4), finetune=FinetuneSpec(epochs=1, batch_size=16)
    )
    res = compress(model, spec, x, y, input_shape=(3, 16, 16))
    assert res.method == "channel pruning 50% + fine-tune"
    assert res.channels["params_after"] < res.channels["params_before"]
    assert sum(p.numel() for p in model.parameters()) == res.channels["params_after"]
