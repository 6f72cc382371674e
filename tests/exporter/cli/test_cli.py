import json
import textwrap
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from exporter.outdir import OUTPUT_MARKER
from runtime_check.batch import load_batch
from tests.helpers import assert_one_line_error, invoke, load_npz

FAST = [
    "--set",
    "runtime.runs=20",
    "--set",
    "runtime.warmup=2",
    "--set",
    "compress.finetune.epochs=1",
]


@pytest.fixture
def trained(digits_seed):
    return digits_seed


def no_leftovers(parent: Path, out: Path):
    assert not out.exists(), f"{out} was written"
    assert not [p for p in parent.iterdir() if p.name.startswith(f".{out.name}.")], (
        "a temp directory was left behind"
    )


def test_run_end_to_end(trained, tmp_path):
    out = tmp_path / "dist"
    res = invoke("run", "--model", "seed-cnn", "--weights", trained, "--out", out, *FAST)
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] is True
    assert report["target"]["name"] == "x86_64"
    assert report["reference"]["accuracy"] > 80
    assert report["reference"]["params"] > 0 and report["reference"]["macs"] > 0
    assert "hold-out" in report["data"]["eval_note"]
    by_path = {a["path"]: a for a in report["artifacts"]}
    assert {"model.fp32.onnx", "model.fp32.tflite", "model.int8.onnx", "model.int8.tflite"} <= set(
        by_path
    )
    i8 = by_path["model.int8.tflite"]
    assert i8["tflite"]["transpose_count"] == 0 and i8["tflite"]["io_dtype"] == "float32"
    assert i8["bytes"] < 0.4 * by_path["model.fp32.tflite"]["bytes"]
    for art in report["artifacts"]:
        assert art["status"] == "ok", art
        assert art["accuracy_drop"] <= 1.5, art["path"]  # the x86_64 recipe's budget
    tfl = by_path["model.fp32.tflite"]
    assert tfl["tflite"]["transpose_count"] == 0 and tfl["input"]["layout"] == "nhwc"
    assert tfl["max_abs_diff"] == pytest.approx(
        by_path["model.fp32.onnx"]["max_abs_diff"], abs=1e-4
    )
    assert tfl["accuracy"] == by_path["model.fp32.onnx"]["accuracy"]
    assert report["quantization"]["within_budget"]
    pairs = {(p["a"], p["b"]): p["agreement"] for p in report["parity"]}
    assert pairs[("model.fp32.onnx", "model.fp32.tflite")] == 1.0
    # XNNPACK runs the int8 TFLite model with ORT's arithmetic: the same logits.
    assert pairs[("model.int8.onnx", "model.int8.tflite")] == 1.0
    assert "predictions" not in art
    art = by_path["model.fp32.onnx"]
    for key in (
        "path",
        "format",
        "precision",
        "storage",
        "bytes",
        "gzip_bytes",
        "accuracy",
        "accuracy_drop",
        "agreement",
        "max_abs_diff",
        "latency_ms",
        "threads",
        "runtime",
        "peak_rss_mb",
        "budgets",
    ):
        assert key in art, key
    assert art["format"] == "onnx" and art["precision"] == "fp32"
    assert abs(art["accuracy_drop"]) <= 1.5 and art["budgets"]["max_accuracy_drop"]["ok"]
    comp = report["compression"]
    assert abs(comp["pruned_fraction"] - 0.75) < 1e-3
    # The artifact reloads and reproduces the accuracy in the report.
    batch = load_batch(out / "eval_batch.npz")
    sess = ort.InferenceSession(str(out / "model.fp32.onnx"))
    pred = sess.run(None, {"input": batch["inputs"]})[0].argmax(1)
    assert (pred == batch["labels"]).mean() * 100 == pytest.approx(art["accuracy"])
    assert report["export"]["onnx_vs_torch_max_abs_diff"] <= 1e-5


def test_qat_runs_when_int8_misses_its_budget(trained, tmp_path, monkeypatch):
    """--qat-epochs: QAT is tried after the calibration search, recorded as an attempt, and
    the int8 artifacts then come from the QAT model when it loses less."""
    import exporter.pipeline as pipeline

    search = pipeline._quantize

    def missed(*args, **kwargs):  # digits int8 always meets its budget; pretend it did not
        outcome = search(*args, **kwargs)
        outcome.within_budget = False
        for a in outcome.attempts:
            a["drop"] = 50.0
        return outcome

    monkeypatch.setattr(pipeline, "_quantize", missed)
    out = tmp_path / "dist"
    res = invoke(
        "run", "--model", "seed-cnn", "--weights", trained, "--out", out, *FAST, "--qat-epochs", "1"
    )
    assert res.exit_code in (0, 1), res.output
    report = json.loads((out / "report.json").read_text())
    q = report["quantization"]
    qat_rows = [a for a in q["attempts"] if a.get("qat_epochs")]
    assert len(qat_rows) == 1 and qat_rows[0]["qat_epochs"] == 1 and qat_rows[0]["chosen"]
    assert sum(a["chosen"] for a in q["attempts"]) == 1
    assert q["qat"]["epochs"] == 1 and q["qat"]["weights_simulated"] == 4
    assert (out / "qat" / "model.fp32.onnx").is_file()
    by_path = {a["path"]: a for a in report["artifacts"]}
    for name in ("model.int8.onnx", "model.int8.tflite"):
        assert by_path[name]["status"] == "ok" and by_path[name]["accuracy_drop"] <= 1.5
    pairs = {(p["a"], p["b"]): p["agreement"] for p in report["parity"]}
    assert pairs[("model.int8.onnx", "model.int8.tflite")] == 1.0
    assert "QAT 1 epochs" in (out / "report.html").read_text()


def test_budget_failure_exits_1(trained, tmp_path):
    out = tmp_path / "d"
    res = invoke(
        "run",
        "--model",
        "seed-cnn",
        "--weights",
        trained,
        "--out",
        out,
        "-q",
        "--set",
        'export.formats=["onnx"]',
        "--set",
        "budgets.max_bytes=1000",
        *FAST,
    )
    assert res.exit_code == 1
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] is False
    assert any("max_bytes" in r for r in report["reasons"])


def test_onnx_entry_skips_compression(trained, tmp_path):
    first = tmp_path / "a"
    assert (
        invoke(
            "run",
            "--model",
            "seed-cnn",
            "--weights",
            trained,
            "--out",
            first,
            "-q",
            "--set",
            'export.formats=["onnx"]',
            *FAST,
        ).exit_code
        == 0
    )
    second = tmp_path / "b"
    res = invoke(
        "run",
        "--model",
        first / "model.fp32.onnx",
        "--out",
        second,
        "-q",
        "--set",
        'export.formats=["onnx"]',
        *FAST,
    )
    assert res.exit_code == 0, res.output
    report = json.loads((second / "report.json").read_text())
    assert report["compression"]["method"].startswith("skipped")
    assert report["artifacts"][0]["accuracy_drop"] == 0


NETS = textwrap.dedent("""
    from torch import nn
    class TwoClass(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.fc = nn.Linear(4, 2)
        def forward(self, x):
            return self.fc(self.conv(x).mean((2, 3)))
    class Tuple(TwoClass):
        def forward(self, x):
            return (super().forward(x), x)
    def nothing():
        return None
""")


@pytest.fixture
def nets(tmp_path):
    path = tmp_path / "nets.py"
    path.write_text(NETS)
    return path


@pytest.fixture
def rgb_npz(tmp_path):
    path = tmp_path / "rgb.npz"
    np.savez(path, images=np.zeros((20, 8, 8, 3), np.uint8), labels=np.arange(20) % 10)
    return path


@pytest.fixture
def empty_npz(tmp_path):
    path = tmp_path / "empty.npz"
    np.savez(path, images=np.zeros((0, 8, 8, 1), np.uint8), labels=np.zeros(0, np.int64))
    return path


def test_bad_inputs_one_line_exit_2_nothing_written(trained, tmp_path, nets, rgb_npz, empty_npz):
    corrupt_pt = tmp_path / "corrupt.pt"
    corrupt_pt.write_bytes(b"PK\x03\x04broken")
    corrupt_onnx = tmp_path / "corrupt.onnx"
    corrupt_onnx.write_bytes(b"\x08\x07\x12\x04junk")
    cases = [
        (["--model", "seed-cnn", "--weights", tmp_path / "none.pt"], "not found"),
        (["--model", "seed-cnn", "--weights", corrupt_pt], "not a readable torch weights file"),
        (["--model", f"{nets}:Missing"], "'Missing' not found"),
        (["--model", f"{nets}:nothing"], "returned NoneType, not a torch.nn.Module"),
        (["--model", f"{nets}:Tuple", "--output", "2"], "the model's outputs are 0, 1"),
        (["--model", f"{nets}:TwoClass"], "label 9 is outside the model's 2 classes"),
        (
            ["--model", f"{nets}:TwoClass", "--data", f"npz:{rgb_npz}"],
            "does not accept 3x8x8 images",
        ),
        (["--model", "seed-cnn", "--data", f"npz:{empty_npz}"], "the data set is empty"),
        (
            ["--model", "seed-cnn", "--weights", trained, "--target", "mars"],
            "unknown target 'mars'",
        ),
        (
            ["--model", "seed-cnn", "--weights", trained, "--set", "runtime.thread=2"],
            "unknown key 'thread'",
        ),
        (["--model", corrupt_onnx], "corrupt.onnx: not a valid ONNX model"),
        (
            ["--model", "seed-cnn", "--weights", trained, "--data", "npz:/nonexistent.npz"],
            "not found",
        ),
    ]
    for args, fragment in cases:
        out = tmp_path / "out"
        res = invoke("run", *args, "--out", out, *FAST)
        assert_one_line_error(res, fragment)
        no_leftovers(tmp_path, out)


def test_existing_out_needs_force(trained, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    res = invoke("run", "--model", "seed-cnn", "--weights", trained, "--out", out, *FAST)
    assert_one_line_error(res, "already exists (use --force")
    assert (out / "keep.txt").read_text() == "mine"
    # --force replaces only a directory edgepack wrote (it carries the marker).
    (out / OUTPUT_MARKER).write_text("{}")
    res = invoke(
        "run",
        "--model",
        "seed-cnn",
        "--weights",
        trained,
        "--out",
        out,
        "--force",
        "-q",
        "--set",
        'export.formats=["onnx"]',
        *FAST,
    )
    assert res.exit_code == 0
    assert not (out / "keep.txt").exists() and (out / "report.json").is_file()


def test_targets_list_and_show():
    res = invoke("targets")
    assert res.exit_code == 0
    assert any(line.startswith("x86_64 ") for line in res.output.splitlines())
    res = invoke("targets", "x86_64")
    assert "compress.prune.sparsity = 0.75" in res.output
    res = invoke("targets", "x86_64", "--json")
    assert json.loads(res.output)["runtime"]["threads"] == 1
    assert_one_line_error(invoke("targets", "nope"), "unknown target 'nope'")


def test_inspect_onnx(trained, tmp_path):
    out = tmp_path / "d"
    invoke(
        "run",
        "--model",
        "seed-cnn",
        "--weights",
        trained,
        "--out",
        out,
        "-q",
        "--set",
        'export.formats=["onnx"]',
        *FAST,
    )
    res = invoke("inspect", out / "model.fp32.onnx")
    assert res.exit_code == 0
    assert "Conv x2" in res.output and "Gemm x2" in res.output
    info = json.loads(invoke("inspect", out / "model.fp32.onnx", "--json").output)
    fc = max(info["tensors"], key=lambda t: t["bytes"])
    assert fc["sparsity"] > 0.5  # the big FC carries most of the 75 % global sparsity
    assert_one_line_error(invoke("inspect", tmp_path / "x.txt"), "cannot inspect '.txt'")


def test_train_refuses_to_overwrite(trained):
    res = invoke("train", "--data", "digits", "--epochs", "1", "--out", trained)
    assert_one_line_error(res, "already exists")
    assert torch.load(trained, weights_only=True)  # untouched and loadable


def test_train_is_deterministic(trained, tmp_path):
    res = invoke(
        "train",
        "--model",
        "seed-cnn",
        "--data",
        "digits",
        "--epochs",
        "4",
        "--out",
        tmp_path / "again.pt",
        "-q",
    )
    assert res.exit_code == 0
    first = torch.load(trained, weights_only=True)
    again = torch.load(tmp_path / "again.pt", weights_only=True)
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_python_api_mirrors_cli(trained, tmp_path):
    import exporter

    result = exporter.run(
        "seed-cnn",
        tmp_path / "api",
        weights=str(trained),
        overrides=('export.formats=["onnx"]', 'export.precisions=["fp32"]', *FAST[1::2]),
    )
    assert result.passed
    on_disk = json.loads((tmp_path / "api" / "report.json").read_text())
    assert on_disk["artifacts"][0]["accuracy"] == result.report["artifacts"][0]["accuracy"]


def test_exported_program_runs_like_the_eager_model(trained, tmp_path):
    from exporter.models.zoo import SeedCNN

    model = SeedCNN(1, (8, 8), 10)
    model.load_state_dict(torch.load(trained, weights_only=True))
    # A static batch of 1, as torch.export gives by default.
    program = torch.export.export(model.eval(), (torch.zeros(1, 1, 8, 8),))
    torch.export.save(program, tmp_path / "seed.pt2")
    args = [
        "--set",
        'export.formats=["onnx"]',
        "--set",
        'export.precisions=["fp32"]',
        "--set",
        'export.storage=["dense"]',
        "-q",
        *FAST,
    ]
    # torch's own FutureWarning from copying an exported program is not the user's to see.
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        res = invoke("run", "--model", tmp_path / "seed.pt2", "--out", tmp_path / "a", *args)
    assert res.exit_code == 0, res.output
    assert (
        invoke(
            "run", "--model", "seed-cnn", "--weights", trained, "--out", tmp_path / "b", *args
        ).exit_code
        == 0
    )
    a = json.loads((tmp_path / "a" / "report.json").read_text())
    b = json.loads((tmp_path / "b" / "report.json").read_text())
    assert a["compression"]["pruned_fraction"] == pytest.approx(0.75, abs=1e-3)
    assert a["artifacts"][0]["accuracy"] == pytest.approx(b["artifacts"][0]["accuracy"], abs=0.6)


def test_uint8_camera_input(trained, tmp_path):
    out = tmp_path / "u8"
    res = invoke(
        "run",
        "--model",
        "seed-cnn",
        "--weights",
        trained,
        "--out",
        out,
        "-q",
        "--set",
        'export.formats=["tflite"]',
        "--set",
        'export.precisions=["fp32","int8"]',
        "--set",
        "quantize.tflite_io=uint8",
        *FAST,
    )
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    by_path = {a["path"]: a for a in report["artifacts"]}
    i8 = by_path["model.int8.tflite"]
    assert i8["input"]["dtype"] == "uint8" and i8["input"]["raw_pixels"] is True
    assert i8["agreement"] >= 0.97 and i8["accuracy_drop"] <= 1.5
    # Raw pixels in, same answers as the float-input fp32 model on (nearly) every image.
    from ai_edge_litert.interpreter import Interpreter

    batch = load_npz(out / "eval_batch.npz")
    it = Interpreter(model_path=str(out / "model.int8.tflite"))
    it.allocate_tensors()
    inp, outp = it.get_input_details()[0], it.get_output_details()[0]
    preds = []
    for img in batch["images"]:
        it.set_tensor(inp["index"], img[None])
        it.invoke()
        preds.append(int(it.get_tensor(outp["index"]).argmax()))
    fp = by_path["model.fp32.tflite"]
    assert (np.array(preds) == batch["labels"]).mean() * 100 == pytest.approx(i8["accuracy"])
    assert abs(i8["accuracy"] - fp["accuracy"]) <= 1.0


def test_inspect_tflite_shows_io_contract(trained, tmp_path):
    out = tmp_path / "d"
    assert (
        invoke(
            "run",
            "--model",
            "seed-cnn",
            "--weights",
            trained,
            "--out",
            out,
            "-q",
            "--set",
            'export.formats=["tflite"]',
            *FAST,
        ).exit_code
        == 0
    )
    res = invoke("inspect", out / "model.int8.tflite")
    assert res.exit_code == 0, res.output
    assert "input: input [1, 8, 8, 1] float32" in res.output
    assert "CONV_2D x2" in res.output and "FULLY_CONNECTED x2" in res.output
    info = json.loads(invoke("inspect", out / "model.int8.tflite", "--json").output)
    weights = [t for t in info["tensors"] if t["dtype"] == "int8" and len(t["shape"]) >= 2]
    assert weights and max(t.get("sparsity") or 0 for t in weights) > 0.5


def test_python_api_train_writes_what_run_reads(tiny_npz, tmp_path):
    import exporter
    from exporter.inputs.data import Normalization, load_data, stratified_split
    from exporter.models.zoo import SeedCNN
    from exporter.training.loop import accuracy, predict

    data = f"npz:{tiny_npz}"
    out = tmp_path / "w" / "tiny.pt"
    res = exporter.train("seed-cnn", out, data=data, epochs=1, batch_size=16)
    assert res.weights == out and res.record == tmp_path / "w" / "tiny.pt.json"
    assert len(res.losses) == 1 and np.isfinite(res.losses[0])

    # The weights load strictly into the architecture they were trained as.
    model = SeedCNN(3, (12, 10), 3)
    model.load_state_dict(torch.load(out, weights_only=True))
    record = json.loads(res.record.read_text())
    assert record["classes"] == ["r", "g", "b"] and record["epochs"] == 1
    assert record["final_loss"] == res.losses[-1]
    # Normalization: the training data's per-channel statistics, computed here independently.
    pixels = load_npz(tiny_npz)["images"].reshape(-1, 3).astype(np.float64) / 255.0
    np.testing.assert_allclose(record["mean"], pixels.mean(0), rtol=1e-12)
    np.testing.assert_allclose(record["std"], pixels.std(0), rtol=1e-12)

    # The reported accuracy is that of the written weights on the seeded 20 % hold-out.
    _, hold = stratified_split(load_data(data), 0.2, 0)
    assert res.eval_images == len(hold) == 18
    norm = Normalization(tuple(record["mean"]), tuple(record["std"]), "record")
    assert res.eval_accuracy == accuracy(predict(model, norm.apply(hold.images)), hold.labels)
    assert record["eval_accuracy"] == res.eval_accuracy

    run = exporter.run(
        "seed-cnn",
        tmp_path / "run",
        weights=str(out),
        data=data,
        overrides=('export.formats=["onnx"]', 'export.precisions=["fp32"]', *FAST[1::2]),
    )
    norm_used = run.report["data"]["normalization"]
    assert norm_used["source"] == "recorded at training in tiny.pt.json"
    assert (norm_used["mean"], norm_used["std"]) == (record["mean"], record["std"])
    # `run` validates on the very images `train` held out, with the same weights.
    assert run.report["reference"]["accuracy"] == res.eval_accuracy


def test_python_api_train_refuses_bad_options_before_writing(tmp_path):
    import exporter
    from exporter.errors import EdgepackError

    for kwargs, match in (
        ({"epochs": 0}, "epochs must be at least 1"),
        ({"holdout": 1.0}, "holdout must be between 0 and 1"),
        ({"lr": 0.0}, "lr must be > 0"),
    ):
        with pytest.raises(EdgepackError, match=match) as err:
            exporter.train("seed-cnn", tmp_path / "w.pt", **kwargs)
        assert err.value.exit_code == 2
    assert not list(tmp_path.iterdir())


def test_train_refuses_an_onnx_model(tmp_path):
    from exporter.models.zoo import SeedCNN
    from exporter.onnx.export import export_onnx

    onnx_path = tmp_path / "m.onnx"
    export_onnx(SeedCNN(1, (8, 8), 10).eval(), (1, 8, 8), onnx_path)
    res = invoke("train", "--model", onnx_path, "--epochs", "1", "--out", tmp_path / "w.pt")
    assert res.exit_code == 2, res.output
    assert "Error: Invalid value for --model: an ONNX model cannot be trained" in res.output
    assert not (tmp_path / "w.pt").exists() and not (tmp_path / "w.pt.json").exists()
