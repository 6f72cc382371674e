"""edgepack package / --verify on a real digits run (module-scoped: one training, one run)."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter

from exporter.errors import PackageError
from exporter.package.zipfile_det import FIXED_TIME, check_entry_name, zip_bytes
from runtime_check.batch import load_batch
from tests.exporter.package.fb_reader import read_model_metadata
from tests.helpers import assert_one_line_error, invoke, load_npz

FAST = [
    "--set",
    "runtime.runs=10",
    "--set",
    "runtime.warmup=1",
    "--set",
    "compress.finetune.epochs=1",
]
PACKAGE_FILES = {
    "model.tflite",
    "model.ort",
    "required_operators.config",
    "labels.txt",
    "manifest.json",
    "USAGE.md",
    "sample_inputs.npz",
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A passed digits run, packaged for Android by `edgepack run --package`."""
    tmp = tmp_path_factory.mktemp("pkg")
    res = invoke("train", "--data", "digits", "--epochs", "3", "--out", tmp / "seed.pt", "-q")
    assert res.exit_code == 0, res.output
    out = tmp / "small"
    res = invoke(
        "run",
        "--model",
        "seed-cnn",
        "--weights",
        tmp / "seed.pt",
        "--out",
        out,
        "-q",
        "--package",
        "--platform",
        "android",
        *FAST,
    )
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture
def copy_dir(run_dir, tmp_path):
    """A copy of the run without its package, to damage freely."""

    def make(name: str = "copy") -> Path:
        dst = tmp_path / name
        shutil.copytree(run_dir, dst, ignore=shutil.ignore_patterns("package", "*.zip"))
        return dst

    return make


def edit_report(path: Path, change) -> None:
    report = json.loads((path / "report.json").read_text())
    change(report)
    (path / "report.json").write_text(json.dumps(report))


def test_run_package_writes_dir_and_deterministic_zip(run_dir):
    pkg = run_dir / "package" / "android"
    zpath = run_dir / "small-android.zip"
    assert {p.name for p in pkg.iterdir()} == PACKAGE_FILES
    with zipfile.ZipFile(zpath) as zf:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        assert names == sorted(PACKAGE_FILES)
        for info in infos:
            assert info.date_time == FIXED_TIME
            assert (info.external_attr >> 16) & 0o777 == 0o644
            assert zf.read(info) == (pkg / info.filename).read_bytes()
    manifest = json.loads((pkg / "manifest.json").read_text())
    assert manifest["allow_failed"] is False and manifest["validation"]["passed"] is True
    assert set(manifest["files"]) == PACKAGE_FILES - {"manifest.json"}
    # The int8 TFLite held its budgets, so it is what ships.
    assert manifest["models"]["model.tflite"]["source"] == "model.int8.tflite"
    assert manifest["models"]["model.ort"]["source"] == "model.int8.onnx"
    assert manifest["classes"] == [str(i) for i in range(10)]
    assert (pkg / "labels.txt").read_text().splitlines() == manifest["classes"]
    usage = (pkg / "USAGE.md").read_text()
    assert "org.tensorflow.lite.Interpreter" in usage and "[1, 8, 8, 1]" in usage


def test_repackaging_gives_identical_bytes(run_dir):
    zpath = run_dir / "small-android.zip"
    first = zpath.read_bytes()
    res = invoke("package", run_dir, "--platform", "android", "-q")
    assert_one_line_error(res, "already exists", "--force")
    assert zpath.read_bytes() == first
    res = invoke("package", run_dir, "--platform", "android", "--force", "-q")
    assert res.exit_code == 0, res.output
    assert zpath.read_bytes() == first


def test_ios_package(run_dir):
    res = invoke("package", run_dir, "--platform", "ios", "--force")
    assert res.exit_code == 0, res.output
    usage = (run_dir / "package" / "ios" / "USAGE.md").read_text()
    assert "TensorFlowLiteSwift" in usage and "Interpreter(modelPath:" in usage
    assert invoke("package", "--verify", run_dir / "small-ios.zip").exit_code == 0


def test_verify_passes_on_fresh_package(run_dir):
    res = invoke("package", "--verify", run_dir / "small-android.zip")
    assert res.exit_code == 0, res.output
    assert "7 files match" in res.output and "16 input(s)" in res.output
    assert "answers as recorded" in res.output


def test_manifest_records_the_models_answers(run_dir):
    """The `expected` block holds what the packaged models answer on the packaged images,
    recomputed here with LiteRT and ONNX Runtime directly."""
    pkg = run_dir / "package" / "android"
    manifest = json.loads((pkg / "manifest.json").read_text())
    exp = manifest["expected"]
    samples = load_npz(pkg / "sample_inputs.npz")
    x = samples["inputs"]
    inp = Interpreter(model_content=(pkg / "model.tflite").read_bytes()).get_input_details()[0]
    scale, zp = inp["quantization"]
    xt = x.transpose(0, 2, 3, 1)
    if inp["dtype"] != np.float32:
        info = np.iinfo(inp["dtype"])
        xt = np.clip(np.round(xt / scale + zp), info.min, info.max).astype(inp["dtype"])
    tfl = _litert((pkg / "model.tflite").read_bytes(), xt)
    sess = ort.InferenceSession((pkg / "model.ort").read_bytes())
    orl = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    assert (exp["inputs"], exp["samples"]) == ("sample_inputs.npz", 16)
    assert exp["models"]["model.tflite"]["top1"] == tfl.argmax(1).tolist()
    assert exp["models"]["model.ort"]["top1"] == orl.argmax(1).tolist()
    assert exp["agreement"] == pytest.approx(float((tfl.argmax(1) == orl.argmax(1)).mean()))
    acc = float((orl.argmax(1) == samples["labels"]).mean() * 100)
    assert exp["models"]["model.ort"]["accuracy"] == pytest.approx(acc)


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


def _rewrite(src: Path, dst: Path, change) -> Path:
    with zipfile.ZipFile(src) as zf:
        files = {n: zf.read(n) for n in zf.namelist()}
    change(files)
    dst.write_bytes(zip_bytes(files))
    return dst


@pytest.mark.parametrize(
    ("change", "fragments"),
    [
        (
            lambda f: f.__setitem__("labels.txt", f["labels.txt"] + b"x\n"),
            ("altered", "labels.txt"),
        ),
        (
            lambda f: f.__setitem__("model.tflite", _flip(f["model.tflite"], 1000)),
            ("altered", "model.tflite"),
        ),
        (lambda f: f.pop("model.ort"), ("missing", "model.ort")),
        (lambda f: f.__setitem__("notes.txt", b"hi"), ("extra", "notes.txt")),
        (lambda f: f.pop("manifest.json"), ("no manifest.json",)),
    ],
)
def test_verify_fails(run_dir, tmp_path, change, fragments):
    bad = _rewrite(run_dir / "small-android.zip", tmp_path / "bad.zip", change)
    assert_one_line_error(invoke("package", "--verify", bad), *fragments)


def _litert(model: bytes, x: np.ndarray) -> np.ndarray:
    interp = Interpreter(model_content=model)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    rows = []
    for i in range(len(x)):
        interp.set_tensor(inp["index"], x[i : i + 1])
        interp.invoke()
        rows.append(interp.get_tensor(out["index"]).copy())
    return np.concatenate(rows)


def test_packaged_tflite_gives_identical_outputs(run_dir):
    x = load_batch(run_dir / "eval_batch.npz")["inputs"].transpose(0, 2, 3, 1)
    plain = _litert((run_dir / "model.int8.tflite").read_bytes(), x)
    packed = _litert((run_dir / "package" / "android" / "model.tflite").read_bytes(), x)
    assert np.array_equal(plain, packed)


def _metadata_buffer(model: bytes) -> bytes:
    root = schema.Model.GetRootAs(model, 0)
    names = [root.Metadata(i).Name() for i in range(root.MetadataLength())]
    assert names.count(b"TFLITE_METADATA") == 1
    md = root.Metadata(names.index(b"TFLITE_METADATA"))
    return root.Buffers(md.Buffer()).DataAsNumpy().tobytes()


def test_metadata_reads_back(run_dir):
    model = (run_dir / "package" / "android" / "model.tflite").read_bytes()
    assert model[4:8] == b"TFL3"
    report = json.loads((run_dir / "report.json").read_text())
    norm = report["data"]["normalization"]
    meta = read_model_metadata(_metadata_buffer(model))
    assert (meta["name"], meta["author"], meta["license"]) == ("small", "edgepack", "Apache-2.0")
    assert meta["version"] == "0.1.0" and meta["min_parser_version"] == "1.0.0"
    (sub,) = meta["subgraphs"]
    inp, out = sub["input"], sub["output"]
    assert inp["name"] == "image" and inp["content_type"] == 2  # ImageProperties
    assert inp["color_space"] == 2 and (inp["width"], inp["height"]) == (8, 8)  # GRAYSCALE
    assert inp["unit_type"] == 1  # NormalizationOptions
    np.testing.assert_allclose(inp["mean"], np.array(norm["mean"]) * 255, rtol=1e-6)
    np.testing.assert_allclose(inp["std"], np.array(norm["std"]) * 255, rtol=1e-6)
    x = load_batch(run_dir / "eval_batch.npz")["inputs"]  # 0 and 255 both occur in digits
    np.testing.assert_allclose(
        [inp["stats_min"][0], inp["stats_max"][0]], [x.min(), x.max()], rtol=1e-5
    )
    assert out["name"] == "logits" and out["content_type"] == 1  # FeatureProperties
    assert out["files"] == [
        {"name": "labels.txt", "description": "class names, one per line", "type": 2}
    ]  # TENSOR_AXIS_LABELS
    with zipfile.ZipFile(io.BytesIO(model)) as zf:  # the associated file, packed in the model
        (info,) = zf.infolist()
        assert info.filename == "labels.txt" and info.compress_type == zipfile.ZIP_STORED
        assert zf.read(info).decode().splitlines() == report["model"]["classes"]


def test_metadata_with_tflite_support_reader(run_dir):
    """tflite-support's MetadataDisplayer: its C++ flatbuffers parser reads the metadata with
    the official metadata_schema.fbs and the zip of associated files (CI installs it with
    ``pip install --no-deps tflite-support``; elsewhere this skips)."""
    md = pytest.importorskip("tensorflow_lite_support.metadata.python.metadata")
    model = (run_dir / "package" / "android" / "model.tflite").read_bytes()
    shown = md.MetadataDisplayer.with_model_buffer(model)
    meta = json.loads(shown.get_metadata_json())
    norm = json.loads((run_dir / "report.json").read_text())["data"]["normalization"]
    assert (meta["name"], meta["min_parser_version"]) == ("small", "1.0.0")
    (sub,) = meta["subgraph_metadata"]
    (tin,), (tout,) = sub["input_tensor_metadata"], sub["output_tensor_metadata"]
    image = tin["content"]["content_properties"]
    assert tin["content"]["content_properties_type"] == "ImageProperties"
    assert image == {"color_space": "GRAYSCALE", "default_size": {"width": 8, "height": 8}}
    (unit,) = tin["process_units"]
    assert unit["options_type"] == "NormalizationOptions"
    np.testing.assert_allclose(unit["options"]["mean"], np.array(norm["mean"]) * 255, rtol=1e-6)
    np.testing.assert_allclose(unit["options"]["std"], np.array(norm["std"]) * 255, rtol=1e-6)
    assert tout["content"]["content_properties_type"] == "FeatureProperties"
    assert [(f["name"], f["type"]) for f in tout["associated_files"]] == [
        ("labels.txt", "TENSOR_AXIS_LABELS")
    ]
    assert shown.get_packed_associated_file_list() == ["labels.txt"]
    labels = (run_dir / "package" / "android" / "labels.txt").read_bytes()
    assert shown.get_associated_file_buffer("labels.txt") == labels


def test_packaged_tflite_adds_only_metadata_and_labels(run_dir):
    """The writer extends the artifact instead of re-packing it (which lost the shared
    quantization vectors: +21 % on an int8 MobileNetV2).

    Allowed on top of metadata + labels: the zip framing of labels.txt (local header 30 +
    central directory 46 + end record 22 bytes, the name twice) and the flatbuffer
    bookkeeping of the new root: a buffers vector (4 bytes a buffer), fresh copies of the
    small root vectors (4 bytes an operator code, subgraph, signature), the root table, the
    new Buffer and Metadata tables, their alignment padding: 4 bytes an entry plus 256.
    """
    artifact = (run_dir / "model.int8.tflite").read_bytes()
    pkg = run_dir / "package" / "android"
    packed = (pkg / "model.tflite").read_bytes()
    meta = _metadata_buffer(packed)
    labels = (pkg / "labels.txt").read_bytes()
    root = schema.Model.GetRootAs(artifact, 0)
    entries = root.BuffersLength() + root.OperatorCodesLength() + 2
    zip_framing = 30 + 46 + 22 + 2 * len("labels.txt")
    overhead = len(packed) - len(artifact) - len(meta) - len(labels)
    assert 0 < overhead <= zip_framing + 4 * entries + 256, overhead
    # The artifact's flatbuffer is carried over byte for byte, behind the new root.
    assert artifact[8:] in packed


def test_ort_model_matches_onnx_top1(run_dir):
    batch = load_batch(run_dir / "eval_batch.npz")
    x = batch["inputs"]
    ref = ort.InferenceSession(str(run_dir / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    packed = ort.InferenceSession(
        (run_dir / "package" / "android" / "model.ort").read_bytes(),
        providers=["CPUExecutionProvider"],
    )
    top_ref = ref.run(None, {ref.get_inputs()[0].name: x})[0].argmax(1)
    top_pkg = packed.run(None, {packed.get_inputs()[0].name: x})[0].argmax(1)
    assert np.array_equal(top_ref, top_pkg)
    config = (run_dir / "package" / "android" / "required_operators.config").read_text()
    assert "QLinearConv" in config and "/tmp" not in config and "# - model.ort" in config


def test_no_report(tmp_path):
    (tmp_path / "x").mkdir()
    assert_one_line_error(invoke("package", tmp_path / "x"), "not an edgepack output directory")
    assert not (tmp_path / "x" / "package").exists()


def _fail_int8_tflite(r):
    for row in r["artifacts"]:
        if row["path"] == "model.int8.tflite":
            row["budgets"]["max_latency_p90_ms"] = {"limit": 1.0, "value": 9.0, "ok": False}
    r["passed"] = False
    r["reasons"] = ["model.int8.tflite: max_latency_p90_ms 9.0 vs limit 1"]


def test_failed_run_ships_only_what_held_unless_named(copy_dir):
    """A run whose int8 TFLite missed a budget: refused, naming the fp32 one that held; the fp32
    one ships when named (or with --allow-failed, which still prefers it); the failing int8 one
    only when named and allowed, marked allow_failed."""
    d = copy_dir("failed")
    edit_report(d, _fail_int8_tflite)
    line = assert_one_line_error(invoke("package", d), "failed validation", "--allow-failed")
    assert "model.fp32.tflite" in line and "model.int8.tflite: max_latency" in line
    assert not (d / "package").exists() and not (d / "failed-android.zip").exists()
    res = invoke("package", d, "--artifact", "model.int8.tflite")
    assert_one_line_error(res, "model.int8.tflite did not hold its budgets", "--allow-failed")

    def shipped(*args):
        res = invoke("package", d, "--force", "-q", *args)
        assert res.exit_code == 0, res.output
        pkg = d / "package" / "android"
        manifest = json.loads((pkg / "manifest.json").read_text())
        assert manifest["validation"]["passed"] is False
        assert invoke("package", "--verify", d / "failed-android.zip").exit_code == 0
        usage = (pkg / "USAGE.md").read_text()
        return manifest["models"]["model.tflite"]["source"], manifest["allow_failed"], usage

    src, failing, usage = shipped("--artifact", "model.fp32.tflite")
    assert (src, failing) == ("model.fp32.tflite", False)
    assert "the shipped models held every budget" in usage
    # --allow-failed permits a failing artifact but still ships one that held (int8 first).
    src, failing, _ = shipped("--allow-failed")
    assert src != "model.int8.tflite" and failing is False
    src, failing, usage = shipped("--artifact", "model.int8.tflite", "--allow-failed")
    assert (src, failing) == ("model.int8.tflite", True)
    assert "FAILED (packaged with --allow-failed)" in usage


def test_run_level_failure_needs_allow_failed(copy_dir):
    """A reason no artifact caused (the run as a whole cannot be trusted): nothing ships
    without --allow-failed, even an artifact that held its budgets."""
    d = copy_dir("unmeaning")

    def fail(r):
        r["passed"] = False
        r["reasons"] = ["the model has random weights: the verdict is not meaningful"]

    edit_report(d, fail)
    res = invoke("package", d, "--artifact", "model.fp32.tflite")
    assert_one_line_error(res, "random weights", "--allow-failed")
    res = invoke("package", d, "--allow-failed", "-q")
    assert res.exit_code == 0, res.output
    manifest = json.loads((d / "package" / "android" / "manifest.json").read_text())
    assert manifest["allow_failed"] is True


def test_changed_artifact_is_not_packaged(copy_dir):
    """artifacts.json records what `edgepack run` validated: a file copied over it is refused."""
    d = copy_dir("swapped")
    shutil.copy(d / "model.fp32.tflite", d / "model.int8.tflite")
    res = invoke("package", d)
    assert_one_line_error(res, "model.int8.tflite", "artifacts.json")
    assert not (d / "package").exists()


def test_missing_classes(copy_dir):
    d = copy_dir()
    edit_report(d, lambda r: r["model"].pop("classes"))
    assert_one_line_error(invoke("package", d), "report.json: report.model: no classes")
    assert not (d / "package").exists()


def test_no_tflite(copy_dir):
    d = copy_dir()
    for tfl in d.glob("*.tflite"):
        tfl.unlink()
    assert_one_line_error(invoke("package", d), "no TFLite artifact")
    assert not (d / "package").exists()


def test_zip_entry_names_are_checked():
    for bad in ("/etc/passwd", "../x", "a/../b", "a\\b", "C:x", ""):
        with pytest.raises(PackageError):
            check_entry_name(bad)
    assert zip_bytes({"b": b"2", "a": b"1"}) == zip_bytes({"a": b"1", "b": b"2"})
