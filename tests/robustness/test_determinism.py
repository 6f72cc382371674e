"""Same inputs, same bytes: two `edgepack run`s on digits write identical artifacts.

The runs are separate processes with different PYTHONHASHSEED values, so anything that
depends on set or dict-of-set order (a classic source of run-to-run differences) shows up.
Calibration and fine-tuning are seeded by the recipe. Latency, peak memory and wall-clock
seconds naturally differ: report.json is compared without them.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.helpers import EDGEPACK
from tests.robustness.options import FAST

# Measured, not computed: differ between two runs of the same command by nature.
VOLATILE_KEYS = {
    "latency_ms",
    "peak_rss_mb",
    "model_rss_mb",
    "conversion_s",
    "seconds",
    "evaluation_seconds",
    "sensitivity_seconds",
    "cached",  # whether the ONNX export came from the export cache: its state, not the run's
}
VOLATILE_BUDGETS = {"max_latency_p90_ms", "max_peak_rss_mb"}


def deterministic(report):
    """``report`` without measured figures (and budgets computed from them)."""
    if isinstance(report, dict):
        return {
            k: (
                deterministic({b: v for b, v in val.items() if b not in VOLATILE_BUDGETS})
                if k == "budgets"
                else deterministic(val)
            )
            for k, val in report.items()
            if k not in VOLATILE_KEYS
        }
    if isinstance(report, list):
        return [deterministic(v) for v in report]
    return report


def test_two_runs_write_identical_artifacts(seed_weights, tmp_path):
    procs = []
    for i, hashseed in enumerate(("1", "2")):
        cmd = [
            str(EDGEPACK),
            "run",
            "--model",
            "seed-cnn",
            "--weights",
            str(seed_weights),
            "--data",
            "digits",
            "--out",
            str(tmp_path / f"run{i}"),
            "-q",
            *FAST,
            "--set",
            "compress.finetune.epochs=2",
        ]  # fine-tuning and int8 are both in
        env = {**os.environ, "PYTHONHASHSEED": hashseed}
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()[-2000:]
    a, b = tmp_path / "run0", tmp_path / "run1"
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for wanted in (
        "model.fp32.onnx",
        "model.int8.onnx",
        "model.fp32.tflite",
        "model.int8.tflite",
        "eval_batch.npz",
        "artifacts.json",
    ):
        assert wanted in names
    # Every file but the two reports (which hold the latency figures) is byte-identical.
    different = [
        n
        for n in names
        if n not in ("report.json", "report.html") and (a / n).read_bytes() != (b / n).read_bytes()
    ]
    assert different == [], f"not byte-identical: {different}"
    ra, rb = (json.loads((d / "report.json").read_text()) for d in (a, b))
    assert deterministic(ra) == deterministic(rb)
    # The accuracy figures, explicitly.
    assert ra["reference"]["accuracy"] == rb["reference"]["accuracy"]
    acc = [(x["path"], x["accuracy"], x["max_abs_diff"]) for x in ra["artifacts"]]
    assert acc == [(x["path"], x["accuracy"], x["max_abs_diff"]) for x in rb["artifacts"]]
    assert ra["compression"]["torch_accuracy"] == rb["compression"]["torch_accuracy"]
    assert Path(a / "model.int8.tflite").stat().st_size > 0
