import os
import pickle
import textwrap

import pytest
import torch

from exporter.errors import InputFileError, ModelLoadError
from exporter.models import load_model, load_weights
from exporter.models.zoo import SeedCNN

NETS = textwrap.dedent("""
    import torch
    from torch import nn

    class Small(nn.Module):
        def __init__(self, num_classes=10, in_channels=3):
            super().__init__()
            self.conv = nn.Conv2d(in_channels, 4, 3)
            self.fc = nn.Linear(4, num_classes)
        def forward(self, x):
            return self.fc(self.conv(x).mean((2, 3)))

    def broken():
        raise RuntimeError("factory exploded")

    def not_a_module():
        return 42
""")


@pytest.fixture
def nets_file(tmp_path):
    path = tmp_path / "my_nets.py"
    path.write_text(NETS)
    return path


def test_builtin_sized_from_data():
    m = load_model("seed-cnn", 1, (8, 8), 10).module
    assert m(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_file_factory_gets_the_arguments_it_names(nets_file):
    loaded = load_model(f"{nets_file}:Small", 1, (8, 8), 5)
    assert loaded.module.fc.out_features == 5 and loaded.module.conv.in_channels == 1


def test_module_factory():
    loaded = load_model("exporter.models.zoo:ResNet8", 3, (16, 16), 4)
    assert loaded.module.fc.out_features == 4


@pytest.mark.parametrize(
    "attr, match",
    [
        ("broken", "raised RuntimeError: factory exploded"),
        ("not_a_module", "returned int, not a torch.nn.Module"),
        ("Missing", "'Missing' not found"),
    ],
)
def test_bad_factories(nets_file, attr, match):
    with pytest.raises(ModelLoadError, match=match):
        load_model(f"{nets_file}:{attr}", 3, (8, 8), 10)


def test_unknown_model_and_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="unknown model 'vgg99'"):
        load_model("vgg99", 3, (8, 8), 10)
    with pytest.raises(InputFileError, match="not found"):
        load_model(f"{tmp_path}/nope.py:Net", 3, (8, 8), 10)
    with pytest.raises(ModelLoadError, match="cannot import module"):
        load_model("no_such_pkg.nets:Net", 3, (8, 8), 10)


def test_weights_mismatch_names_keys(tmp_path):
    model = SeedCNN(1, (8, 8), 10)
    state = model.state_dict()
    state.pop("features.0.bias")
    state["extra.weight"] = torch.zeros(1)
    state["classifier.3.weight"] = torch.zeros(3, 128)
    path = tmp_path / "w.pt"
    torch.save(state, path)
    with pytest.raises(ModelLoadError) as err:
        load_weights(SeedCNN(1, (8, 8), 10), path)
    msg = str(err.value)
    assert "missing keys: features.0.bias" in msg
    assert "unexpected keys: extra.weight" in msg
    assert "classifier.3.weight [3, 128] vs model [10, 128]" in msg


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/edgepack-pwned",))


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
# torch.load warns about any protocol > 2 checkpoint before refusing it; the refusal is what
# this test is about.
@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_pickle_with_code_is_refused(tmp_path, protocol):
    path = tmp_path / "evil.pt"
    torch.save({"w": _Evil()}, path, pickle_protocol=protocol)
    # Protocol 2 is refused by torch's weights-only unpickler; 4/5 (which it cannot read) by
    # torch.load with an allowlist of state_dict types, naming the global it refused.
    with pytest.raises(InputFileError, match=r"refused by torch.load.*system") as err:
        load_weights(SeedCNN(1, (8, 8), 10), path)
    assert "code is never run" in str(err.value)
    assert not os.path.exists("/tmp/edgepack-pwned")


def test_corrupt_weights(tmp_path):
    good = tmp_path / "good.pt"
    torch.save(SeedCNN(1, (8, 8), 10).state_dict(), good)
    path = tmp_path / "w.pt"
    path.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(InputFileError, match="w.pt: not a readable torch weights file"):
        load_weights(SeedCNN(1, (8, 8), 10), path)
    path.write_bytes(b"\x00\x01 not torch")
    with pytest.raises(InputFileError, match="w.pt: refused by"):
        load_weights(SeedCNN(1, (8, 8), 10), path)


def test_exported_program(tmp_path):
    model = SeedCNN(1, (8, 8), 10).eval()
    prog = torch.export.export(model, (torch.zeros(1, 1, 8, 8),))
    torch.export.save(prog, tmp_path / "m.pt2")
    loaded = load_model(str(tmp_path / "m.pt2"), 1, (8, 8), 10)
    x = torch.randn(1, 1, 8, 8)
    assert torch.allclose(loaded.module(x), model(x))
    (tmp_path / "bad.pt2").write_bytes(b"junk")
    with pytest.raises(InputFileError, match="not a readable torch.export program"):
        load_model(str(tmp_path / "bad.pt2"), 1, (8, 8), 10)


class _Outputs(torch.nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)
        self.kind = kind

    def forward(self, x):
        y = self.fc(x.flatten(1)[:, :4])
        if self.kind == "tuple":
            return y, y.softmax(1)
        if self.kind == "dict":
            return {"probs": y.softmax(1), "logits": y}
        return y


@pytest.mark.parametrize(
    "kind, output, chosen, names",
    [
        ("tuple", None, "0", ["0", "1"]),
        ("tuple", "1", "1", ["0", "1"]),
        ("dict", None, "probs", ["probs", "logits"]),
        ("dict", "logits", "logits", ["probs", "logits"]),
        ("tensor", None, None, []),
    ],
)
def test_select_output(kind, output, chosen, names):
    from exporter.models.loading import select_output

    model = _Outputs(kind).eval()
    module, got, got_names = select_output(model, (1, 2, 2), output)
    assert (got, got_names) == (chosen, names)
    x = torch.randn(5, 1, 2, 2)
    with torch.no_grad():
        full = model(x)
        want = full if chosen is None else (full[int(chosen)] if kind == "tuple" else full[chosen])
        assert torch.equal(module(x), want)
    if chosen is not None:  # the user's parameters, under the wrapper
        assert set(module.state_dict()) == {f"model.{k}" for k in model.state_dict()}


def test_select_output_refuses_unknown_names():
    from exporter.models.loading import select_output

    with pytest.raises(ModelLoadError, match="outputs are probs, logits; 'scores' is not"):
        select_output(_Outputs("dict").eval(), (1, 2, 2), "scores")
    with pytest.raises(ModelLoadError, match="--output scores: the model returns a single"):
        select_output(_Outputs("tensor").eval(), (1, 2, 2), "scores")


def test_a_model_without_weights_starts_from_the_same_weights_every_run():
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    first = load_model("mobilenetv2-cifar", 3, (32, 32), 10).module.state_dict()
    # The caller's generator is left as it was: the seed is for the model alone.
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.manual_seed(7)
    again = load_model("mobilenetv2-cifar", 3, (32, 32), 10).module.state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_the_seed_chooses_the_initial_weights():
    zero = load_model("seed-cnn", 3, (32, 32), 10).module.state_dict()
    one = load_model("seed-cnn", 3, (32, 32), 10, seed=1).module.state_dict()
    assert not all(torch.equal(zero[k], one[k]) for k in zero)
