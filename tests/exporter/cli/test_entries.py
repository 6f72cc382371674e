"""`edgepack run --model` on files edgepack did not write (issue #15): ONNX with any input name,
a dynamic or fixed batch, symbolic H/W, NHWC input, several outputs, external data; torch models
that return tuples or dicts; `.pt2` programs with BatchNorm/Dropout. Every figure is checked
against onnxruntime on the user's own file, or torch in eval mode."""

import json
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from ai_edge_litert.interpreter import Interpreter
from onnx import helper

from exporter.models.zoo import SeedCNN
from exporter.onnx.export import export_onnx
from runtime_check.batch import load_batch
from tests.helpers import assert_one_line_error, invoke

FAST = ["-q", "--set", "runtime.runs=5", "--set", "runtime.warmup=1", "--set", "eval.samples=60"]
DENSE = ["--set", "compress.prune.sparsity=0", "--set", "compress.finetune.epochs=0"]
FP32 = ["--set", 'export.precisions=["fp32"]', "--set", 'export.storage=["dense"]']


@pytest.fixture(scope="module")
def seed_onnx(digits_seed, tmp_path_factory) -> Path:
    """The trained seed CNN as a plain ONNX file (input 'input', dynamic batch)."""
    model = SeedCNN(1, (8, 8), 10)
    model.load_state_dict(torch.load(digits_seed, weights_only=True))
    path = tmp_path_factory.mktemp("seed-onnx") / "seed.onnx"
    export_onnx(model.eval(), (1, 8, 8), path)
    return path


def _rename_input(model: onnx.ModelProto, new: str) -> None:
    old = model.graph.input[0].name
    model.graph.input[0].name = new
    for node in model.graph.node:
        node.input[:] = [new if n == old else n for n in node.input]


def _variant(seed_onnx: Path, tmp: Path, kind: str) -> Path:
    """The seed model as another tool might have written it; input named 'pixels'."""
    model = onnx.load(str(seed_onnx))
    _rename_input(model, "pixels")
    dims = model.graph.input[0].type.tensor_type.shape.dim
    path = tmp / f"{kind}.onnx"
    if kind == "batch1":
        dims[0].dim_value = 1
    elif kind == "symbolic-hw":
        dims[2].dim_param, dims[3].dim_param = "H", "W"
    elif kind == "nhwc":
        _rename_input(model, "pixels_nchw")
        model.graph.node.insert(
            0, helper.make_node("Transpose", ["pixels"], ["pixels_nchw"], perm=[0, 3, 1, 2])
        )
        model.graph.input[0].name = "pixels"
        for dim, value in zip(dims[1:], (8, 8, 1), strict=True):
            dim.dim_value = value
    elif kind == "two-outputs":
        logits = model.graph.output[0].name
        model.graph.node.append(helper.make_node("Softmax", [logits], ["probs"], axis=1))
        probs = helper.make_tensor_value_info("probs", onnx.TensorProto.FLOAT, ["batch", 10])
        model.graph.output.insert(0, probs)
    if kind == "external":
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location="external.onnx.data",  # the weights; small shape constants stay inline
        )
        assert (tmp / "external.onnx.data").stat().st_size > 10_000
    else:
        onnx.save_model(model, str(path))
    onnx.checker.check_model(str(path))
    return path


def _user_logits(path: Path, nchw: np.ndarray, output: str | None = None) -> np.ndarray:
    """onnxruntime on the user's own file, fed in its own layout, one image at a time."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    x = nchw.transpose(0, 2, 3, 1) if inp.shape[3] == 1 else nchw
    outs = [output] if output else None
    return np.concatenate([sess.run(outs, {inp.name: x[i : i + 1]})[0] for i in range(len(x))])


def _tflite_logits(path: Path, nchw: np.ndarray) -> tuple[str, np.ndarray]:
    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    rows = []
    for image in nchw.transpose(0, 2, 3, 1):
        it.set_tensor(inp["index"], image[None])
        it.invoke()
        rows.append(it.get_tensor(out["index"]))
    return inp["name"], np.concatenate(rows)


@pytest.mark.parametrize(
    "kind, layout, output",
    [
        ("pixels", "nchw", None),
        ("batch1", "nchw", None),
        ("symbolic-hw", "nchw", None),
        ("nhwc", "nhwc", None),
        ("two-outputs", "nchw", "logits"),
        ("external", "nchw", None),
    ],
)
def test_onnx_entries(seed_onnx, tmp_path, kind, layout, output):
    src = _variant(seed_onnx, tmp_path, "pixels" if kind == "pixels" else kind)
    out = tmp_path / "out"
    # int8 on the plain renamed file: its calibration feeds the model's own input name.
    precisions = [] if kind == "pixels" else FP32
    args = ["--output", output] if output else []
    res = invoke("run", "--model", src, "--out", out, *args, *precisions, *FAST)
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    model = report["model"]
    assert (model["input_name"], model["input_layout"]) == ("pixels", layout)
    assert model["output"] == output
    batch = load_batch(out / "eval_batch.npz")
    x = batch["inputs"]
    # The reference is the user's file, run by onnxruntime in its own layout.
    want = _user_logits(src, x, output)
    np.testing.assert_allclose(batch["reference_logits"], want, rtol=0, atol=1e-5)
    name, tfl = _tflite_logits(out / "model.fp32.tflite", x)
    assert name == "pixels"
    span = float(np.ptp(want))
    assert np.abs(tfl - want).max() <= 1e-5 * span
    by_path = {a["path"]: a for a in report["artifacts"]}
    assert by_path["model.fp32.tflite"]["tflite"]["transpose_count"] == 0
    assert by_path["model.fp32.onnx"]["max_abs_diff"] <= 1e-5 * span
    if kind == "external":
        # model.fp32.onnx stands alone: its weights were read from the data file into it.
        assert not list(out.glob("*.data"))
        assert onnx.load(str(out / "model.fp32.onnx"), load_external_data=False).graph.initializer
    if kind == "pixels":
        i8 = by_path["model.int8.onnx"]
        sess = ort.InferenceSession(str(out / "model.int8.onnx"))
        assert sess.get_inputs()[0].name == "pixels"
        assert i8["agreement"] >= 0.9 and abs(i8["accuracy_drop"]) <= 5
        assert report["artifacts"] and model["adapted"] is None


@pytest.mark.parametrize(
    "kind, args, fragments",
    [
        ("two-outputs", ["--output", "scores"], ("--output scores", "no output 'scores'", "probs")),
        ("pixels", ["--layout", "nhwc"], ("takes input 'pixels'", "not NHWC")),
        ("symbolic-chw", [], ("could be NCHW or NHWC", "--layout nchw")),
        ("batch8", [], ("fixed batch of 8", "batch 1 or a dynamic batch")),
    ],
)
def test_onnx_entry_refusals(seed_onnx, tmp_path, kind, args, fragments):
    base = "pixels" if kind in ("symbolic-chw", "batch8") else kind
    src = _variant(seed_onnx, tmp_path, base)
    if kind in ("symbolic-chw", "batch8"):
        model = onnx.load(str(src))
        dims = model.graph.input[0].type.tensor_type.shape.dim
        if kind == "batch8":
            dims[0].dim_value = 8
        else:
            for d in dims[1:]:
                d.dim_param = "s"
        onnx.save_model(model, str(src))
    out = tmp_path / "out"
    res = invoke("run", "--model", src, "--out", out, *args, *FP32, *FAST)
    assert_one_line_error(res, *fragments)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == [src.name]


def test_first_output_is_the_default(seed_onnx, tmp_path):
    """Without --output the first output is validated, and the report names it and the others."""
    src = _variant(seed_onnx, tmp_path, "two-outputs")
    out = tmp_path / "out"
    res = invoke("run", "--model", src, "--out", out, *FP32, *FAST)
    assert res.exit_code in (0, 1), res.output
    model = json.loads((out / "report.json").read_text())["model"]
    assert (model["output"], model["outputs"]) == ("probs", ["probs", "logits"])
    assert model["adapted"] == ["output 'probs' of probs, logits"]
    batch = load_batch(out / "eval_batch.npz")
    want = _user_logits(src, batch["inputs"], "probs")
    np.testing.assert_allclose(batch["reference_logits"], want, rtol=0, atol=1e-6)
    assert [o.name for o in onnx.load(str(out / "model.fp32.onnx")).graph.output] == ["probs"]


NETS = textwrap.dedent("""
    from collections import namedtuple

    import torch
    from torch import nn

    from exporter.models.zoo import SeedCNN

    Out = namedtuple("Out", ["logits", "aux"])

    class Heads(nn.Module):
        def __init__(self, in_channels=1, image_size=(8, 8), num_classes=10):
            super().__init__()
            self.net = SeedCNN(in_channels, image_size, num_classes)

    class TupleOut(Heads):
        def forward(self, x):
            y = self.net(x)
            return y, y.softmax(1)

    class DictOut(Heads):
        def forward(self, x):
            y = self.net(x)
            return {"probs": y.softmax(1), "logits": y}

    class NamedOut(Heads):
        def forward(self, x):
            y = self.net(x)
            return Out(y, torch.zeros_like(y))

    class BatchBranch(Heads):
        # Eager: the seed CNN for any batch. Exported with a dynamic batch, torch.onnx keeps
        # the branch of its example batch, which is wrong from 3 images on.
        def forward(self, x):
            y = self.net(x)
            return y[:2] if x.shape[0] <= 2 else y

    class BnDropout(nn.Module):
        def __init__(self, in_channels=1, num_classes=10):
            super().__init__()
            self.conv = nn.Conv2d(in_channels, 16, 3, padding=1)
            self.bn = nn.BatchNorm2d(16)
            self.drop = nn.Dropout(0.5)
            self.fc = nn.Linear(16 * 4 * 4, num_classes)
        def forward(self, x):
            x = torch.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
            return self.fc(self.drop(x.flatten(1)))
""")


@pytest.fixture(scope="module")
def heads(digits_seed, tmp_path_factory) -> tuple[Path, Path]:
    """nets.py and the trained seed weights under the wrappers' `net.` prefix."""
    tmp = tmp_path_factory.mktemp("heads")
    nets = tmp / "nets.py"
    nets.write_text(NETS)
    state = torch.load(digits_seed, weights_only=True)
    weights = tmp / "heads.pt"
    torch.save({f"net.{k}": v for k, v in state.items()}, weights)
    return nets, weights


def _seed(digits_seed) -> SeedCNN:
    model = SeedCNN(1, (8, 8), 10)
    model.load_state_dict(torch.load(digits_seed, weights_only=True))
    return model.eval()


@pytest.mark.parametrize(
    "net, args, chosen, outputs",
    [
        ("TupleOut", [], "0", ["0", "1"]),
        ("DictOut", ["--output", "logits"], "logits", ["probs", "logits"]),
        ("NamedOut", [], "logits", ["logits", "aux"]),
    ],
)
def test_torch_model_with_several_outputs(digits_seed, heads, tmp_path, net, args, chosen, outputs):
    nets, weights = heads
    out = tmp_path / "out"
    res = invoke(
        "run", "--model", f"{nets}:{net}", "--weights", weights, "--out", out, *args, *FP32,
        "--set", 'export.formats=["onnx"]', *DENSE, *FAST,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert (report["model"]["output"], report["model"]["outputs"]) == (chosen, outputs)
    batch = load_batch(out / "eval_batch.npz")
    with torch.no_grad():
        want = _seed(digits_seed)(torch.from_numpy(batch["inputs"])).numpy()
    np.testing.assert_allclose(batch["reference_logits"], want, rtol=0, atol=1e-5)
    sess = ort.InferenceSession(str(out / "model.fp32.onnx"))
    assert len(sess.get_outputs()) == 1
    np.testing.assert_allclose(sess.run(None, {"input": batch["inputs"]})[0], want, atol=1e-4)


def test_export_falls_back_to_a_static_batch(digits_seed, heads, tmp_path):
    """A model whose code decides on the batch size: the dynamic-batch graph is caught computing
    something else, and the batch-1 export is used, as the report says."""
    nets, weights = heads
    out = tmp_path / "out"
    res = invoke(
        "run", "--model", f"{nets}:BatchBranch", "--weights", weights, "--out", out, *FP32,
        *DENSE, *FAST,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    export = json.loads((out / "report.json").read_text())["export"]
    assert export["exporter"] == "dynamo" and export["dynamic_batch"] is False
    assert "does not compute the model on batch 3" in export["fallback_reason"]
    sess = ort.InferenceSession(str(out / "model.fp32.onnx"))
    assert sess.get_inputs()[0].shape[0] == 1
    batch = load_batch(out / "eval_batch.npz")
    with torch.no_grad():
        want = _seed(digits_seed)(torch.from_numpy(batch["inputs"])).numpy()
    got = np.concatenate([sess.run(None, {"input": x[None]})[0] for x in batch["inputs"]])
    np.testing.assert_allclose(got, want, atol=1e-4)
    _, tfl = _tflite_logits(out / "model.fp32.tflite", batch["inputs"])
    np.testing.assert_allclose(tfl, want, atol=1e-4)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_pt2_with_batchnorm_and_dropout(heads, tmp_path, mode):
    """A torch.export program of a model with BatchNorm and Dropout computes as eval() does,
    also when it was exported in training mode (its nodes are set to eval, and the report says
    so)."""
    nets, _ = heads
    weights = tmp_path / "bn.pt"
    res = invoke("train", "--model", f"{nets}:BnDropout", "--epochs", "2", "--out", weights, "-q")
    assert res.exit_code == 0, res.output
    import importlib.util

    spec = importlib.util.spec_from_file_location("entries_nets", nets)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.BnDropout()
    model.load_state_dict(torch.load(weights, weights_only=True))
    getattr(model, mode)()
    batch_dim = torch.export.Dim("batch")
    program = torch.export.export(
        model, (torch.zeros(2, 1, 8, 8),), dynamic_shapes=({0: batch_dim},)
    )
    torch.export.save(program, tmp_path / "bn.pt2")
    model.eval()
    out = tmp_path / "out"
    res = invoke(
        "run", "--model", tmp_path / "bn.pt2", "--out", out, *FP32,
        *DENSE, *FAST,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    batch = load_batch(out / "eval_batch.npz")
    with torch.no_grad():
        want = model(torch.from_numpy(batch["inputs"])).numpy()
    np.testing.assert_allclose(batch["reference_logits"], want, rtol=0, atol=1e-5)
    sess = ort.InferenceSession(str(out / "model.fp32.onnx"))
    np.testing.assert_allclose(sess.run(None, {"input": batch["inputs"]})[0], want, atol=1e-4)
    adapted = json.loads((out / "report.json").read_text())["model"]["adapted"]
    if mode == "train":
        assert adapted and "exported in training mode" in adapted[0]
    else:
        assert adapted is None
