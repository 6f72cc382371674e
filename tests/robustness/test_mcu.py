"""Bad inputs of the microcontroller (TFLM) targets and their package: a recipe that asks a
board for what TFLM cannot do, an output with nothing a board can run, a package of a run
that was never validated under TFLM, and a package whose model array was tampered with.

Harness cases in ``CASES`` (side ``target``): one line, exit 2, nothing written.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import zipfile
from collections.abc import Callable

import pytest

from exporter.package.zipfile_det import zip_bytes
from tests.helpers import invoke
from tests.robustness.harness import Call, Ctx, check_case

pytest.importorskip("tflite_micro")


def _tflm_sparse_storage(ctx: Ctx) -> Call:
    return Call(
        ctx.seeded("--target", "nano33ble", "--set", 'export.storage=["dense","sparse"]'),
        ("--set export.storage", "TFLM reads no sparse tensors"),
    )


def _tflm_float_layers(ctx: Ctx) -> Call:
    return Call(
        ctx.seeded("--target", "stm32h7", "--set", "quantize.max_float_layers=2"),
        ("--set quantize.max_float_layers", "must be 0"),
    )


def _tflm_onnx_format(ctx: Ctx) -> Call:
    return Call(
        ctx.seeded("--target", "esp32s3", "--set", 'export.formats=["onnx","tflite"]'),
        ("--set export.formats", 'must be ["tflite"]'),
    )


def _tflm_latency_budget(ctx: Ctx) -> Call:
    return Call(
        ctx.seeded("--target", "nano33ble", "--set", "budgets.max_latency_p90_ms=10"),
        ("--set budgets.max_latency_p90_ms", "must be unset"),
    )


def _arena_budget_on_a_cpu_target(ctx: Ctx) -> Call:
    return Call(
        ctx.seeded("--set", "budgets.max_arena_bytes=100000"),
        ("--set budgets.max_arena_bytes", "only a device.kind = 'tflm' target measures it"),
    )


def _check_fp32_output_on_a_board(ctx: Ctx) -> Call:
    out = ctx.copy_out()
    return Call(
        ["check", out, "--target", "nano33ble", "-q"],
        ("target 'nano33ble' runs int8 .tflite models under TFLM", "model.fp32.tflite"),
    )


def _package_mcu_of_a_cpu_run(ctx: Ctx) -> Call:
    out = ctx.copy_out()
    return Call(
        ["package", out, "--platform", "mcu", "-q"],
        ("was not validated under TensorFlow Lite Micro", "--target nano33ble"),
    )


def _verify_a_tampered_array(ctx: Ctx) -> Call:
    out = ctx.tmp / "small"
    shutil.copytree(ctx.fixture("mcu_digits"), out)
    assert invoke("package", out, "--platform", "mcu", "-q").exit_code == 0
    with zipfile.ZipFile(out / "small-mcu.zip") as zf:
        files = {n: zf.read(n) for n in zf.namelist()}
    # One byte of the array changed, and the manifest's file hashes brought up to date.
    text = files["model_data.cc"].decode()
    hits = list(re.finditer(r"0x[0-9a-f]{2}", text))
    at = hits[len(hits) // 2].start()
    byte = int(text[at + 2 : at + 4], 16) ^ 0xFF
    files["model_data.cc"] = (text[:at] + f"0x{byte:02x}" + text[at + 4 :]).encode()
    manifest = json.loads(files["manifest.json"])
    for name in manifest["files"]:
        sha = hashlib.sha256(files[name]).hexdigest()
        manifest["files"][name] = {"sha256": sha, "bytes": len(files[name])}
    files["manifest.json"] = json.dumps(manifest).encode()
    bad = ctx.tmp / "tampered-mcu.zip"
    bad.write_bytes(zip_bytes(files))
    return Call(
        ["package", "--verify", bad],
        ("tampered-mcu.zip", "g_model_data array of model_data.cc is not the packaged model"),
    )


CASES: list[tuple[str, Callable[[Ctx], Call]]] = [
    ("target/tflm-sparse-storage", _tflm_sparse_storage),
    ("target/tflm-float-fallback-layers", _tflm_float_layers),
    ("target/tflm-onnx-format", _tflm_onnx_format),
    ("target/tflm-latency-budget", _tflm_latency_budget),
    ("target/arena-budget-on-a-cpu-target", _arena_budget_on_a_cpu_target),
    ("target/check-fp32-output-on-a-board", _check_fp32_output_on_a_board),
    ("target/package-mcu-of-a-cpu-run", _package_mcu_of_a_cpu_run),
    ("target/verify-mcu-tampered-array", _verify_a_tampered_array),
]


@pytest.mark.parametrize("builder", [b for _, b in CASES], ids=[i for i, _ in CASES])
def test_case(builder, tmp_path, request, monkeypatch):
    check_case(builder, tmp_path, request, monkeypatch)
