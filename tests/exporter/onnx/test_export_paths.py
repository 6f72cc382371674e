"""torch.onnx export paths (issue #15): the fallbacks, their one-line failure, and the export
cache (issue #16). Every exported graph is checked against the eager model by onnxruntime."""

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from exporter.errors import ConversionError
from exporter.onnx.export import export_onnx_info, first_cause, onnx_logits


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 10)

    def core(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))

    def forward(self, x):
        return self.core(x)


class NoTorchExport(Small):
    """Runs eagerly and under TorchScript tracing, refuses torch.export (dynamo)."""

    def forward(self, x):
        if torch.compiler.is_compiling():
            raise RuntimeError("not under torch.export")
        return self.core(x)


class ValueBranch(NoTorchExport):
    """A branch on a tensor's value: a trace freezes the branch of its example."""

    def forward(self, x):
        if torch.compiler.is_compiling():
            raise RuntimeError("not under torch.export")
        y = self.core(x)
        return y if float(x.sum()) > 0 else -y


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPACK_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _model(cls, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = cls()
    model.bn.running_mean.uniform_(-0.5, 0.5)
    model.bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _parity(model: nn.Module, path) -> float:
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(x).numpy()
    return float(np.abs(onnx_logits(path, x.numpy()) - want).max())


def test_first_cause_is_the_innermost_message():
    try:
        try:
            raise ValueError("Constraints violated (batch)! For more information, run with X")
        except ValueError as inner:
            raise RuntimeError("\x1b[96mFailed to export\x1b[0m\nNext steps: ...") from inner
    except RuntimeError as outer:
        assert first_cause(outer) == "Constraints violated (batch)!"


def test_torchscript_path_when_dynamo_fails(tmp_path):
    model = _model(NoTorchExport)
    how = export_onnx_info(model, (1, 8, 8), tmp_path / "m.onnx")
    assert (how.exporter, how.dynamic_batch) == ("torchscript", True)
    assert how.fallback_reason == "not under torch.export"
    assert _parity(model, tmp_path / "m.onnx") < 1e-5


def test_a_trace_that_froze_a_branch_is_refused_in_one_line(tmp_path):
    with pytest.raises(ConversionError) as info:
        export_onnx_info(_model(ValueBranch), (1, 8, 8), tmp_path / "m.onnx")
    message = str(info.value)
    assert "\n" not in message
    assert "dynamo, dynamic batch: not under torch.export" in message
    assert "dynamo, batch 1: not under torch.export" in message
    assert "torchscript, dynamic batch: the exported graph does not compute the model" in message
    assert not (tmp_path / "m.onnx").exists()


def test_cache_reuses_an_export_of_the_same_weights_only(tmp_path, private_cache):
    model = _model(Small)
    first = export_onnx_info(model, (1, 8, 8), tmp_path / "a.onnx")
    again = export_onnx_info(model, (1, 8, 8), tmp_path / "b.onnx")
    assert (first.cached, again.cached) == (False, True)
    assert (again.exporter, again.dynamic_batch) == ("dynamo", True)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    with torch.no_grad():
        model.fc.bias[3] += 1.0  # one weight changed: another model
    changed = export_onnx_info(model, (1, 8, 8), tmp_path / "c.onnx")
    assert not changed.cached and _parity(model, tmp_path / "c.onnx") < 1e-5
    assert len(list(private_cache.glob("*.onnx"))) == 2


def test_a_stale_cache_entry_is_exported_again(tmp_path, private_cache):
    """A cached graph that no longer computes the model (its code changed where the key does not
    look) is caught by the parity check and replaced."""
    model = _model(Small)
    export_onnx_info(model, (1, 8, 8), tmp_path / "a.onnx")
    (entry,) = private_cache.glob("*.onnx")
    other = _model(Small, seed=1)
    export_onnx_info(other, (1, 8, 8), tmp_path / "other.onnx", force=True)
    entry.write_bytes((tmp_path / "other.onnx").read_bytes())  # same key, another graph
    how = export_onnx_info(model, (1, 8, 8), tmp_path / "b.onnx")
    assert not how.cached and _parity(model, tmp_path / "b.onnx") < 1e-5
    assert onnx.load(str(entry)) == onnx.load(str(tmp_path / "b.onnx"))


def test_cache_off(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPACK_CACHE_DIR", "")
    model = _model(Small)
    export_onnx_info(model, (1, 8, 8), tmp_path / "a.onnx")
    assert not export_onnx_info(model, (1, 8, 8), tmp_path / "b.onnx").cached
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx", "b.onnx"]
