"""`edgepack package` and `package --verify` against packages that lie (issue #14, sections 4-5).

A package whose files were swapped or replaced and whose manifest hashes were rewritten to
match must still fail verification, on the figures its manifest recorded at packaging time; a
zip bomb is refused from its central directory before anything is inflated; a run that failed
its budgets ships only an artifact that held them, and only when asked by name.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import struct
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema

from exporter.package.zipfile_det import zip_bytes
from tests.helpers import EDGEPACK, assert_one_line_error, invoke
from tests.robustness.harness import Call, Ctx, check_case
from tests.robustness.options import FAST, FP32_ONLY

GIB = 1 << 30


@pytest.fixture(scope="session")
def seed_package(seed_out, tmp_path_factory) -> Path:
    """An android package zip of the session's (fp32) output directory."""
    out = tmp_path_factory.mktemp("robust-pkg") / "dist"
    shutil.copytree(seed_out, out)
    res = invoke("package", out, "--platform", "android", "-q")
    assert res.exit_code == 0, res.output
    return out / "dist-android.zip"


def _files(zip_path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(zip_path) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def _forged(ctx: Ctx, change: Callable[[dict[str, bytes]], None], name: str = "forged.zip"):
    """The session's package after ``change``, with manifest.json's hashes rewritten to match:
    what a careless (or hostile) hand would produce, and what sha256 checks alone let through."""
    files = _files(ctx.fixture("seed_package"))
    change(files)
    manifest = json.loads(files["manifest.json"])
    manifest["files"] = {
        n: {"sha256": hashlib.sha256(d).hexdigest(), "bytes": len(d)}
        for n, d in files.items()
        if n != "manifest.json"
    }
    files["manifest.json"] = json.dumps(manifest).encode()
    path = ctx.tmp / name
    path.write_bytes(zip_bytes(files))
    return path


def _other_weights(model: bytes) -> bytes:
    """The same TFLite model (metadata and labels included) with its largest float weight
    reversed in place: it loads and runs, and answers otherwise."""
    root = schema.Model.GetRootAs(model, 0)
    buffers = [root.Buffers(i) for i in range(root.BuffersLength())]
    biggest = max(buffers, key=lambda b: b.DataLength())
    data = biggest.DataAsNumpy().tobytes()
    at = model.find(data)
    flipped = np.frombuffer(data, np.float32)[::-1].tobytes()
    return model[:at] + flipped + model[at + len(data) :]


def _swap(files: dict[str, bytes], a: str, b: str) -> None:
    files[a], files[b] = files[b], files[a]


def _set_manifest(files: dict[str, bytes], change: Callable[[dict], None]) -> None:
    manifest = json.loads(files["manifest.json"])
    change(manifest)
    files["manifest.json"] = json.dumps(manifest).encode()


# ------------------------------------------------------------------- verify: what went out


def _verify(path: Path) -> list:
    return ["package", "--verify", path]


def _models_swapped(ctx: Ctx) -> Call:
    path = _forged(ctx, lambda f: _swap(f, "model.tflite", "model.ort"))
    return Call(_verify(path), ("model.tflite", "not a TFLite model"))


def _tflite_other_weights(ctx: Ctx) -> Call:
    def change(files):
        files["model.tflite"] = _other_weights(files["model.tflite"])

    return Call(_verify(_forged(ctx, change)), ("model.tflite", "recorded", "sample_inputs.npz"))


def _samples_relabelled(ctx: Ctx) -> Call:
    """sample_inputs.npz with other images: the models answer differently than recorded."""

    def change(files):
        with np.load(io.BytesIO(files["sample_inputs.npz"])) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["inputs"] = np.ascontiguousarray(arrays["inputs"][::-1])
        arrays["images"] = np.ascontiguousarray(arrays["images"][::-1])
        files["sample_inputs.npz"] = _npz(arrays)

    return Call(_verify(_forged(ctx, change)), ("recorded", "sample_inputs.npz"))


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    members = {}
    for key, arr in arrays.items():
        buf = io.BytesIO()
        np.lib.format.write_array(buf, arr, allow_pickle=False)
        members[f"{key}.npy"] = buf.getvalue()
    return zip_bytes(members)


def _manifest_without_models(ctx: Ctx) -> Call:
    path = _forged(ctx, lambda f: _set_manifest(f, lambda m: m.pop("models")))
    return Call(_verify(path), ("manifest.json", "models"))


def _manifest_without_expected(ctx: Ctx) -> Call:
    path = _forged(ctx, lambda f: _set_manifest(f, lambda m: m.pop("expected")))
    return Call(_verify(path), ("manifest.json", "expected"))


def _manifest_not_an_object(ctx: Ctx) -> Call:
    path = _forged(ctx, lambda f: None)
    files = _files(path)
    files["manifest.json"] = b"[1, 2, 3]"
    path.write_bytes(zip_bytes(files))
    return Call(_verify(path), ("manifest.json",))


def _manifest_other_version(ctx: Ctx) -> Call:
    path = _forged(ctx, lambda f: _set_manifest(f, lambda m: m.update(manifest_version=99)))
    return Call(_verify(path), ("manifest_version", "99"))


def _bomb_entry(zf: zipfile.ZipFile, name: str, size: int) -> None:
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    chunk = bytes(1 << 20)
    with zf.open(info, "w", force_zip64=True) as f:
        for _ in range(size // len(chunk)):
            f.write(chunk)


@pytest.fixture(scope="session")
def zip_bomb(seed_package, tmp_path_factory) -> Path:
    """The session's package plus a 1 GiB entry of zeros: about 1 MB on disk."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.zip"
    files = _files(seed_package)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in sorted(files.items()):
            if name != "model.ort":
                zf.writestr(name, data)
        _bomb_entry(zf, "model.ort", GIB)
    assert path.stat().st_size < 4 << 20
    return path


def _zip_bomb(ctx: Ctx) -> Call:
    return Call(_verify(ctx.fixture("zip_bomb")), ("model.ort", "1073741824"))


def _samples_npz_bomb(ctx: Ctx) -> Call:
    """A small sample_inputs.npz that inflates to 1 GiB: the nested zip has limits too."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        _bomb_entry(zf, "inputs.npy", GIB)
    bomb = buf.getvalue()

    def change(files):
        files["sample_inputs.npz"] = bomb

    return Call(_verify(_forged(ctx, change)), ("sample_inputs.npz", "inputs.npy"))


def _npy_header_lies(ctx: Ctx) -> Call:
    """An .npy whose header declares 10^11 floats but holds 64 bytes."""

    def change(files):
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            buf, {"descr": "<f4", "fortran_order": False, "shape": (10**11,)}
        )
        with np.load(io.BytesIO(files["sample_inputs.npz"])) as z:
            members = {f"{k}.npy": z[k] for k in z.files}
        raw = {k: _npy(v) for k, v in members.items()}
        raw["inputs.npy"] = buf.getvalue() + bytes(64)
        files["sample_inputs.npz"] = zip_bytes(raw)

    return Call(_verify(_forged(ctx, change)), ("sample_inputs.npz", "inputs"))


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _entry_larger_than_declared(ctx: Ctx) -> Call:
    """The central directory says 100 bytes, the stored data is 4 MiB: read no further."""
    files = _files(ctx.fixture("seed_package"))
    path = ctx.tmp / "liar.zip"
    big = bytes(4 << 20)
    files["model.ort"] = big
    data = bytearray(zip_bytes(files, compress=zipfile.ZIP_STORED))
    # Patch the uncompressed and compressed sizes of model.ort in both its headers.
    name = b"model.ort"
    for sig, size_at in ((b"PK\x03\x04", 18), (b"PK\x01\x02", 20)):
        at = 0
        while (at := data.find(sig, at)) != -1:
            name_len = struct.unpack_from("<H", data, at + (26 if sig == b"PK\x03\x04" else 28))[0]
            start = at + (30 if sig == b"PK\x03\x04" else 46)
            if bytes(data[start : start + name_len]) == name:
                struct.pack_into("<II", data, at + size_at, 100, 100)
            at += 4
    path.write_bytes(bytes(data))
    return Call(_verify(path), ("model.ort",))


# ------------------------------------------------------------ package: what is chosen to ship


def _failed_copy(ctx: Ctx, fail: str) -> Path:
    """A copy of the session's output directory whose report says ``fail`` missed a budget."""
    out = ctx.copy_out()
    report = json.loads((out / "report.json").read_text())
    for row in report["artifacts"]:
        if row["path"] == fail:
            row["budgets"]["max_bytes"] = {"limit": 1, "value": row["bytes"], "ok": False}
    report["passed"] = False
    report["reasons"] = [f"{fail}: max_bytes {1} vs limit 1"]
    (out / "report.json").write_text(json.dumps(report))
    return out


def _failed_run_without_artifact(ctx: Ctx) -> Call:
    out = _failed_copy(ctx, "model.fp32.tflite")
    return Call(["package", out], ("failed validation", "model.fp32.tflite", "--allow-failed"))


def _artifact_that_failed(ctx: Ctx) -> Call:
    out = _failed_copy(ctx, "model.fp32.tflite")
    args = ["package", out, "--artifact", "model.fp32.tflite"]
    return Call(args, ("model.fp32.tflite", "max_bytes", "--allow-failed"))


def _artifact_unknown(ctx: Ctx) -> Call:
    out = ctx.copy_out()
    args = ["package", out, "--artifact", "model.int8.tflite"]
    return Call(args, ("model.int8.tflite", "model.fp32.tflite"))


def _artifact_not_a_model(ctx: Ctx) -> Call:
    out = ctx.copy_out()
    args = ["package", out, "--artifact", "report.json"]
    return Call(args, ("report.json", "not a"))


CASES: list[tuple[str, Callable[[Ctx], Call]]] = [
    ("package/verify-models-swapped", _models_swapped),
    ("package/verify-tflite-other-weights", _tflite_other_weights),
    ("package/verify-samples-replaced", _samples_relabelled),
    ("package/verify-manifest-without-models", _manifest_without_models),
    ("package/verify-manifest-without-expected", _manifest_without_expected),
    ("package/verify-manifest-not-an-object", _manifest_not_an_object),
    ("package/verify-manifest-other-version", _manifest_other_version),
    ("package/verify-zip-bomb", _zip_bomb),
    ("package/verify-samples-npz-bomb", _samples_npz_bomb),
    ("package/verify-npy-header-lies", _npy_header_lies),
    ("package/verify-entry-larger-than-declared", _entry_larger_than_declared),
    ("package/failed-run-without-artifact", _failed_run_without_artifact),
    ("package/artifact-that-failed", _artifact_that_failed),
    ("package/artifact-unknown", _artifact_unknown),
    ("package/artifact-not-a-model", _artifact_not_a_model),
]


@pytest.mark.parametrize("builder", [b for _, b in CASES], ids=[i for i, _ in CASES])
def test_case(builder, tmp_path, request, monkeypatch):
    check_case(builder, tmp_path, request, monkeypatch)


# ------------------------------------------------------------------ beyond the harness


def test_untouched_package_verifies(seed_package):
    res = invoke("package", "--verify", seed_package)
    assert res.exit_code == 0, res.output
    assert "as recorded" in res.output and "top-1 agreement 1.000" in res.output


def test_zip_bomb_refused_with_little_memory(zip_bomb, tmp_path):
    """The refusal comes from the central directory: peak memory of the whole process stays
    far below the 1 GiB the entry would inflate to (the libraries alone take ~200 MB)."""
    probe = textwrap.dedent(f"""
        import resource, subprocess, sys
        proc = subprocess.run([{str(EDGEPACK)!r}, "package", "--verify", {str(zip_bomb)!r}],
                              capture_output=True, text=True)
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(proc.returncode, round(peak_mb), proc.stderr.strip(), sep="|")
    """)
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    code, peak_mb, err = out.strip().split("|", 2)
    assert code == "2" and err.startswith("error: ") and "model.ort" in err, out
    assert int(peak_mb) < 300, f"peak RSS {peak_mb} MB"


def test_failed_run_package_ships_only_what_held(tmp_path, seed_out):
    """--allow-failed never prefers a failing artifact; --artifact names one that held."""
    out = tmp_path / "dist"
    shutil.copytree(seed_out, out)
    report = json.loads((out / "report.json").read_text())
    for row in report["artifacts"]:
        if row["path"] == "model.fp32.onnx":
            row["budgets"]["max_bytes"] = {"limit": 1, "value": row["bytes"], "ok": False}
    report["passed"] = False
    report["reasons"] = ["model.fp32.onnx: max_bytes 1 vs limit 1"]
    (out / "report.json").write_text(json.dumps(report))
    # Only the ONNX failed: the TFLite that held ships when named, with the run's verdict.
    res = invoke("package", out, "--artifact", "model.fp32.tflite", "-q")
    # ORT is converted from the ONNX, which failed: that needs --allow-failed too.
    assert_one_line_error(res, "model.fp32.onnx", "--allow-failed")
    assert not (out / "package").exists()
    res = invoke("package", out, "--artifact", "model.fp32.tflite", "--allow-failed", "-q")
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "package" / "android" / "manifest.json").read_text())
    assert manifest["models"]["model.tflite"]["source"] == "model.fp32.tflite"
    assert manifest["allow_failed"] is True and manifest["validation"]["passed"] is False


def test_run_package_on_a_failed_run_says_so(tmp_path, seed_weights):
    out = tmp_path / "out"
    res = invoke(
        "run",
        "--model",
        "seed-cnn",
        "--weights",
        seed_weights,
        "--out",
        out,
        "-q",
        "--package",
        *FAST,
        *FP32_ONLY,
        "--set",
        "budgets.max_bytes=1",
    )
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.output.splitlines() if "packag" in ln]
    assert len(lines) == 1 and "not packaged" in lines[0] and "failed" in lines[0], res.output
    assert not (out / "package").exists() and not list(out.glob("*.zip"))
