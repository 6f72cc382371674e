"""`edgepack package --platform mcu` and its --verify, on a real TFLM-validated digits run: the
C++ sources compile with the host's g++, the compiled array is the validated .tflite, the op
resolver lists exactly the model's operators, and a tampered package fails verification."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from exporter.package.mcu import (
    MODEL_CC,
    MODEL_H,
    OPS_H,
    arena_constant,
    array_bytes,
    resolver_method,
)
from exporter.package.zipfile_det import zip_bytes
from runtime_check.tflm import _trial, model_operators
from tests.helpers import assert_one_line_error, invoke

pytest.importorskip("tflite_micro")


@pytest.fixture(scope="module")
def packaged(mcu_digits, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mcu-pkg") / "small"
    shutil.copytree(mcu_digits, out)
    res = invoke("package", out, "--platform", "mcu", "-q")
    assert res.exit_code == 0, res.output
    return out


def _files(packaged: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(packaged / "small-mcu.zip") as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def test_model_data_cc_compiles_and_its_array_is_the_validated_model(packaged, tmp_path):
    gpp = shutil.which("g++")
    if gpp is None:
        pytest.skip("needs g++ (apt-get install g++)")
    src = packaged / "package" / "mcu"
    obj = tmp_path / "model_data.o"
    subprocess.run(
        [gpp, "-std=c++17", "-Wall", "-Wextra", "-Werror", "-c", src / MODEL_CC, "-o", obj],
        check=True,
    )
    # A program linked against the object writes the array as the compiler laid it out.
    (tmp_path / "dump.cc").write_text(
        '#include <cstdint>\n#include <cstdio>\n#include "model_data.h"\n'
        "int main() {\n  std::fwrite(g_model_data, 1, g_model_data_len, stdout);\n"
        "  return reinterpret_cast<std::uintptr_t>(g_model_data) % 16 != 0;\n}\n"
    )
    exe = tmp_path / "dump"
    subprocess.run(
        [gpp, "-std=c++17", f"-I{src}", tmp_path / "dump.cc", obj, "-o", exe], check=True
    )
    dumped = subprocess.run([exe], capture_output=True, check=True).stdout
    assert dumped == (packaged / "model.int8.tflite").read_bytes()


def test_the_resolver_registers_exactly_the_models_operators(packaged):
    model = (packaged / "model.int8.tflite").read_bytes()
    ops = {o.op for o in model_operators(model)}
    text = (packaged / "package" / "mcu" / OPS_H).read_text()
    assert set(re.findall(r"resolver\.(Add\w+)\(\)", text)) == {resolver_method(o) for o in ops}
    assert "MicroMutableOpResolver<kModelOpCount>" in text
    assert f"kModelOpCount = {len(ops)};" in text


@pytest.mark.parametrize(
    "op, method",
    [
        ("CONV_2D", "AddConv2D"),
        ("DEPTHWISE_CONV_2D", "AddDepthwiseConv2D"),
        ("FULLY_CONNECTED", "AddFullyConnected"),
        ("AVERAGE_POOL_2D", "AddAveragePool2D"),
        ("BATCH_TO_SPACE_ND", "AddBatchToSpaceNd"),
        ("PADV2", "AddPadV2"),
        ("RELU6", "AddRelu6"),
        ("HARD_SWISH", "AddHardSwish"),
        ("UNIDIRECTIONAL_SEQUENCE_LSTM", "AddUnidirectionalSequenceLSTM"),
    ],
)
def test_resolver_method_names_follow_tflm(op, method):
    # Names as in tensorflow/lite/micro/micro_mutable_op_resolver.h.
    assert resolver_method(op) == method


def test_the_arena_constant_is_the_measured_arena_plus_margin_and_runs(packaged):
    report = json.loads((packaged / "report.json").read_text())
    (row,) = [a for a in report["artifacts"] if a["path"] == "model.int8.tflite"]
    header = (packaged / "package" / "mcu" / MODEL_H).read_text()
    constant = int(re.search(r"kTensorArenaSize = (\d+);", header).group(1))
    assert constant == arena_constant(row["arena_bytes"]) >= 1.25 * row["arena_bytes"]
    assert constant % 1024 == 0
    assert _trial((packaged / "model.int8.tflite").read_bytes(), constant)[0]


def test_the_package_is_deterministic_and_its_manifest_hashes_every_file(packaged, tmp_path):
    first = (packaged / "small-mcu.zip").read_bytes()
    res = invoke("package", packaged, "--platform", "mcu", "--force", "-q")
    assert res.exit_code == 0, res.output
    assert (packaged / "small-mcu.zip").read_bytes() == first
    files = _files(packaged)
    manifest = json.loads(files["manifest.json"])
    for name, entry in manifest["files"].items():
        assert hashlib.sha256(files[name]).hexdigest() == entry["sha256"]
    model = (packaged / "model.int8.tflite").read_bytes()
    assert manifest["model"]["sha256"] == hashlib.sha256(model).hexdigest()
    assert manifest["flash_bytes"] == len(model)
    assert array_bytes(files[MODEL_CC].decode()) == model


def test_verify_runs_the_array_under_tflm(packaged):
    res = invoke("package", "--verify", packaged / "small-mcu.zip")
    assert res.exit_code == 0, res.output
    assert "ran under TFLM" in res.output and "answers as recorded" in res.output


def _repack(files: dict[str, bytes], path: Path, rehash: bool) -> Path:
    """The files as a zip; with ``rehash`` the manifest is brought up to date with them, as a
    careful tamperer would."""
    if rehash:
        manifest = json.loads(files["manifest.json"])
        for name in manifest["files"]:
            data = files[name]
            manifest["files"][name] = {
                "sha256": hashlib.sha256(data).hexdigest(),
                "bytes": len(data),
            }
        files = {**files, "manifest.json": json.dumps(manifest).encode()}
    path.write_bytes(zip_bytes(files))
    return path


def _flip_first_weight_byte(cc: bytes) -> bytes:
    text = cc.decode()
    # A byte well inside the array (the buffers, not the header), changed to another value.
    start = text.index("{") + 1
    tokens = list(re.finditer(r"0x([0-9a-f]{2})", text[start:]))
    tok = tokens[len(tokens) // 2]
    new = f"0x{(int(tok.group(1), 16) ^ 0x55):02x}"
    at = start + tok.start()
    return (text[:at] + new + text[at + 4 :]).encode()


@pytest.mark.parametrize(
    "rehash, fragment",
    [
        (False, "altered (sha256 or size mismatch): model_data.cc"),
        (True, "the g_model_data array of model_data.cc is not the packaged model"),
    ],
)
def test_verify_of_a_tampered_array_fails(packaged, tmp_path, rehash, fragment):
    files = _files(packaged)
    files[MODEL_CC] = _flip_first_weight_byte(files[MODEL_CC])
    bad = _repack(files, tmp_path / "bad.zip", rehash)
    assert_one_line_error(invoke("package", "--verify", bad), str(bad), fragment)


def test_verify_of_an_arena_constant_too_small_fails(packaged, tmp_path):
    files = _files(packaged)
    files[MODEL_H] = re.sub(
        rb"kTensorArenaSize = \d+;", b"kTensorArenaSize = 2048;", files[MODEL_H]
    )
    bad = _repack(files, tmp_path / "small-arena.zip", rehash=True)
    assert_one_line_error(invoke("package", "--verify", bad), "does not run in a 2,048-byte arena")
