import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from exporter.compress.prune import prune_model
from exporter.errors import InputFileError
from exporter.models.zoo import ResNet8, SeedCNN
from exporter.onnx.export import describe_onnx, export_onnx, load_onnx
from tests.helpers import randomize_batchnorm


def _parity(model, shape, path):
    export_onnx(model, shape, path)
    x = np.random.default_rng(1).standard_normal((16, *shape)).astype(np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    return float(np.abs(got - want).max())


@pytest.mark.parametrize(
    "factory, shape",
    [
        (lambda: SeedCNN(3, (32, 32), 10), (3, 32, 32)),
        (lambda: randomize_batchnorm(ResNet8(3, (24, 20), 7)), (3, 24, 20)),
    ],
)
def test_onnx_matches_torch(factory, shape, tmp_path):
    torch.manual_seed(0)
    model = factory().eval()
    path = tmp_path / "m.onnx"
    assert _parity(model, shape, path) <= 1e-5
    loaded = onnx.load(str(path))
    onnx.checker.check_model(loaded, full_check=True)
    ops = {n.op_type for n in loaded.graph.node}
    assert "BatchNormalization" not in ops, "BatchNorm must be folded"
    assert "Dropout" not in ops
    assert max(o.version for o in loaded.opset_import if o.domain == "") >= 17
    assert list(tmp_path.iterdir()) == [path], "single-file ONNX, no side files or temp files"


def test_sparsity_survives_export(tmp_path):
    torch.manual_seed(0)
    model = SeedCNN(1, (8, 8), 10).eval()
    prune_model(model, sparsity=0.6, scope="layer", exclude=[])
    export_onnx(model, (1, 8, 8), tmp_path / "m.onnx")
    info = describe_onnx(tmp_path / "m.onnx")
    weights = [t for t in info["tensors"] if len(t["shape"]) >= 2]
    assert len(weights) == 4
    for t in weights:
        assert t["sparsity"] == pytest.approx(0.6, abs=1.0 / np.prod(t["shape"]) + 1e-9)
    assert info["ops"]["Conv"] == 2 and info["ops"]["Gemm"] == 2
    assert info["input"]["shape"][1:] == [1, 8, 8]


def test_truncated_onnx(tmp_path):
    torch.manual_seed(0)
    export_onnx(SeedCNN(1, (8, 8), 10), (1, 8, 8), tmp_path / "m.onnx")
    data = (tmp_path / "m.onnx").read_bytes()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(InputFileError, match="bad.onnx: not a valid ONNX model"):
        load_onnx(bad)


def test_missing_onnx(tmp_path):
    with pytest.raises(InputFileError, match="not found"):
        load_onnx(tmp_path / "nope.onnx")


def test_missing_external_data(tmp_path):
    torch.manual_seed(0)
    export_onnx(SeedCNN(1, (8, 8), 10), (1, 8, 8), tmp_path / "m.onnx")
    model = onnx.load(str(tmp_path / "m.onnx"))
    onnx.save_model(
        model,
        str(tmp_path / "ext.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="ext.onnx.data",
        size_threshold=0,
    )
    assert describe_onnx(tmp_path / "ext.onnx")["params"] > 0  # loads with its data
    (tmp_path / "ext.onnx.data").unlink()
    with pytest.raises(InputFileError, match="external data file 'ext.onnx.data'.*missing"):
        load_onnx(tmp_path / "ext.onnx")


def test_export_does_not_overwrite_without_force(tmp_path):
    from exporter.errors import OutputExistsError

    path = tmp_path / "m.onnx"
    path.write_bytes(b"keep")
    with pytest.raises(OutputExistsError):
        export_onnx(SeedCNN(1, (8, 8), 10), (1, 8, 8), path, force=False)
    assert path.read_bytes() == b"keep"
