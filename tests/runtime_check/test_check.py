import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch

from exporter.models.zoo import SeedCNN
from exporter.onnx.export import export_onnx
from runtime_check import check
from runtime_check.evaluate import evaluate_artifact, load_batch
from runtime_check.verdict import judge_artifact, verdict


@pytest.fixture(scope="module")
def onnx_and_batch(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rc")
    torch.manual_seed(0)
    model = SeedCNN(3, (12, 10), 4).eval()
    export_onnx(model, (3, 12, 10), tmp / "m.onnx")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 3, 12, 10)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    labels = ref.argmax(1).copy()
    labels[:10] = (labels[:10] + 1) % 4  # 75 % accuracy by construction
    np.savez(tmp / "batch.npz", inputs=x, labels=labels, reference_logits=ref)
    return tmp / "m.onnx", tmp / "batch.npz"


def test_evaluate_onnx(onnx_and_batch):
    model, batch = onnx_and_batch
    r = evaluate_artifact(model, load_batch(batch), runs=20, warmup=2)
    assert r["status"] == "ok"
    assert r["accuracy"] == pytest.approx(75.0)
    assert r["agreement"] == 1.0
    assert r["max_abs_diff"] < 1e-5
    assert r["latency_ms"]["runs"] == 20
    assert 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p90"]
    assert r["input"]["layout"] == "nchw"
    assert r["bytes"] == model.stat().st_size and 0 < r["gzip_bytes"] < r["bytes"]


def test_cli_prints_json_with_isolated_rss(onnx_and_batch):
    model, batch = onnx_and_batch
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "runtime_check",
            str(model),
            "--batch",
            str(batch),
            "--runs",
            "10",
            "--threads",
            "2",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    out = json.loads(proc.stdout)
    (res,) = out["results"]
    assert res["status"] == "ok" and res["threads"] == 2
    assert res["peak_rss_mb"] > 10
    assert out["cpu"]["machine"] and "onnxruntime" in out["runtimes"]


def test_runtime_check_does_not_import_torch(onnx_and_batch):
    model, batch = onnx_and_batch
    code = (
        "import sys, runtime_check; runtime_check.check([sys.argv[1]], sys.argv[2], runs=3,"
        " isolate=False); import sys; bad=[m for m in ('torch','exporter','click','onnx')"
        " if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code, str(model), str(batch)], check=True)


def test_wrong_input_shape_is_an_error(onnx_and_batch, tmp_path):
    model, _ = onnx_and_batch
    x = np.zeros((4, 1, 8, 8), np.float32)
    np.savez(
        tmp_path / "b.npz",
        inputs=x,
        labels=np.zeros(4, np.int64),
        reference_logits=np.zeros((4, 4), np.float32),
    )
    r = evaluate_artifact(model, load_batch(tmp_path / "b.npz"), runs=1)
    assert r["status"] == "error"
    assert "model input is [-1, 3, 12, 10] but the eval batch is [N,1,8,8]" in r["reason"]


def test_missing_runtime_is_skipped(onnx_and_batch, tmp_path, monkeypatch):
    model, batch = onnx_and_batch
    tfl = tmp_path / "m.tflite"
    tfl.write_bytes(b"TFL3")
    import runtime_check.runtimes as rt

    def no_tflite():
        raise rt.RuntimeUnavailable("no TFLite runtime (pip install ai-edge-litert)")

    monkeypatch.setattr(rt, "_tflite_interpreter_module", no_tflite)
    out = check([model, tfl], batch, runs=2, isolate=False)
    statuses = [r["status"] for r in out["results"]]
    assert statuses == ["ok", "skipped"]
    assert "pip install ai-edge-litert" in out["results"][1]["reason"]


def test_corrupt_artifact_is_an_error(onnx_and_batch, tmp_path):
    _, batch = onnx_and_batch
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x01garbage")
    r = check([bad], batch, runs=1)["results"][0]
    assert r["status"] == "error" and "onnxruntime cannot load bad.onnx" in r["reason"]


def test_comparator_is_pure_and_judges_each_budget():
    res = {
        "path": "a.onnx",
        "status": "ok",
        "accuracy": 74.0,
        "agreement": 0.97,
        "bytes": 1000,
        "latency_ms": {"p50": 1.0, "p90": 2.0, "mean": 1.2},
    }
    budgets = {
        "max_accuracy_drop": 1.5,
        "min_agreement": 0.98,
        "max_latency_p90_ms": 5.0,
        "max_bytes": None,
    }
    judged = judge_artifact(res, 75.0, budgets)
    assert judged["max_accuracy_drop"] == {"limit": 1.5, "value": 1.0, "ok": True}
    assert judged["min_agreement"]["ok"] is False
    assert "max_bytes" not in judged
    ok, reasons = verdict([res], 75.0, budgets)
    assert not ok and reasons == ["a.onnx: min_agreement 0.97 vs limit 0.98"]
    ok, _ = verdict([res], 75.0, {"max_accuracy_drop": 1.5})
    assert ok
    ok, reasons = verdict([{"path": "b", "status": "skipped", "excluded": True}], 75.0, {})
    assert not ok and reasons == ["no artifact could be validated"]
    ok, reasons = verdict([res, {"path": "c", "status": "error", "reason": "boom"}], 75.0, {})
    assert not ok and reasons == ["c: not validated (boom)"]


def test_ort_reference_matches_runtime(onnx_and_batch):
    model, batch = onnx_and_batch
    data = load_batch(batch)
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input": data["inputs"]})[0]
    assert np.abs(out - data["reference_logits"]).max() < 1e-5


def test_parity_pairs_artifacts():
    from runtime_check.verdict import parity

    rows = parity(
        [
            {"path": "a.onnx", "status": "ok", "predictions": [0, 1, 2, 3]},
            {"path": "b.tflite", "status": "ok", "predictions": [0, 1, 2, 0]},
            {"path": "c.tflite", "status": "skipped"},
            {"path": "d.onnx", "status": "ok", "predictions": [0, 1, 2, 3]},
        ]
    )
    assert rows == [
        {"a": "a.onnx", "b": "b.tflite", "agreement": 0.75},
        {"a": "a.onnx", "b": "d.onnx", "agreement": 1.0},
        {"a": "b.tflite", "b": "d.onnx", "agreement": 0.75},
    ]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmRSS is read from /proc")
def test_model_rss_grows_with_the_model_not_the_batch(tmp_path):
    """model_rss_mb counts what the session and model add, not the eval batch.

    The runtime's own share varies with what the parent process has loaded (12-25 MB for ORT
    here), so the sizes compared are far larger than that.
    """
    from runtime_check.evaluate import evaluate_isolated

    rng = np.random.default_rng(0)

    def measure(hidden: int, n: int) -> float:
        x = rng.standard_normal((n, 3, 32, 32)).astype(np.float32)
        model = torch.nn.Sequential(
            torch.nn.Flatten(),
            torch.nn.Linear(3 * 32 * 32, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, 4),
        ).eval()
        path = export_onnx(model, (3, 32, 32), tmp_path / f"m{hidden}_{n}.onnx")
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        batch = {"inputs": x, "labels": ref.argmax(1), "reference_logits": ref}
        res = evaluate_isolated(path, batch, runs=3, warmup=1)
        assert res["status"] == "ok", res
        return res["model_rss_mb"]

    small, large = measure(8, 20), measure(8192, 20)
    weights_mb = 3 * 32 * 32 * 8192 * 4 / 2**20  # 96 MB of float32 weights
    assert 0 < small < 64
    assert 0.8 * weights_mb <= large - small <= 3 * weights_mb, (small, large)
    batch_mb = 20000 * 3 * 32 * 32 * 4 / 2**20  # 234 MB, prepared after the measurement
    assert measure(8, 20000) < 0.25 * batch_mb
