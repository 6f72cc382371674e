"""Load: 20 small models exported back to back in one process leak no memory and no files.

Each model: export_onnx -> convert_model -> runtime_check.evaluate_artifact on both the ONNX
and the TFLite file (sessions opened and dropped in this process). RSS is read from
/proc/self/statm (the current resident set, not the peak) after a warm-up of 3 models, which
loads torch.onnx / onnxscript / the runtimes' kernels once; the next 17 must add < 50 MB.
Open descriptors are counted in /proc/self/fd before and after.
"""

from __future__ import annotations

import gc
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from exporter.onnx.export import export_onnx, load_onnx
from exporter.tflite import convert_model
from runtime_check.evaluate import evaluate_artifact

MODELS, WARMUP = 20, 3
MAX_GROWTH_MB = 50


def _rss_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _model(i: int) -> nn.Module:
    torch.manual_seed(i)
    w = 4 + i % 5  # a different width each time: new tensors, new kernels
    return nn.Sequential(
        nn.Conv2d(1, w, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(w, 2 * w, 3, padding=1),
        nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * w, 10),
    ).eval()


def _one(i: int, tmp: Path, batch: dict) -> None:
    onnx_path, tfl_path = tmp / f"m{i}.onnx", tmp / f"m{i}.tflite"
    export_onnx(_model(i), (1, 8, 8), onnx_path)
    data, _ = convert_model(load_onnx(onnx_path))
    tfl_path.write_bytes(data)
    for path in (onnx_path, tfl_path):
        res = evaluate_artifact(path, batch, warmup=1, runs=5)
        assert res["status"] == "ok", res
        assert res["agreement"] == 1.0 and res["max_abs_diff"] < 1e-4, res
    onnx_path.unlink()
    tfl_path.unlink()


@pytest.mark.slow
def test_twenty_models_leak_no_memory_or_files(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 1, 8, 8)).astype(np.float32)
    batch = {"inputs": x, "labels": np.arange(16) % 10}
    rss, fds = [], []
    fds_before = _fds()
    for i in range(MODELS):
        # The reference is the eager model itself: each artifact must agree with it.
        with torch.no_grad():
            batch["reference_logits"] = _model(i)(torch.from_numpy(x)).numpy()
        _one(i, tmp_path, batch)
        gc.collect()
        rss.append(_rss_mb())
        fds.append(_fds())
    growth = rss[-1] - rss[WARMUP - 1]
    print(
        f"\nRSS after model 3: {rss[WARMUP - 1]:.1f} MB, after model 20: {rss[-1]:.1f} MB "
        f"(growth {growth:+.1f} MB over {MODELS - WARMUP} models); "
        f"open fds before / after 3 / after 20: {fds_before} / {fds[WARMUP - 1]} / {fds[-1]}"
    )
    assert growth < MAX_GROWTH_MB, rss
    # Every descriptor a model opens (files, sessions) is closed again: the count is flat.
    assert fds[-1] <= fds_before, (fds_before, fds)
    assert list(tmp_path.iterdir()) == []
