"""QEMU (ARM64) and SSH targets, end to end through `edgepack check`, against x86 results.

The QEMU tests build the ARM64 sysroot once per session (~15 s; reused from $EDGEPACK_CACHE when
that is set) and skip only when qemu-aarch64 is absent or the download is impossible. The SSH
tests start a real sshd on 127.0.0.1 with throw-away keys; the "device" is this machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from exporter.errors import RecipeError, RuntimeCheckError
from exporter.recipe import load_recipe
from runtime_check import evaluate
from runtime_check import qemu as rq
from tests.helpers import assert_one_line_error, free_port, invoke

FAST = ["--set", "runtime.runs=10", "--set", "runtime.warmup=1"]


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory, digits_seed) -> Path:
    """A trained seed CNN on digits exported to ONNX and TFLite, fp32 and int8."""
    tmp = tmp_path_factory.mktemp("remote")
    res = invoke(
        "run",
        "--model",
        "seed-cnn",
        "--weights",
        digits_seed,
        "--data",
        "digits",
        "--out",
        tmp / "dist",
        "--set",
        'export.formats=["onnx","tflite"]',
        "--set",
        'export.precisions=["fp32","int8"]',
        "--set",
        "eval.samples=120",
        "--set",
        "compress.finetune.epochs=1",
        *FAST,
        "-q",
    )
    assert res.exit_code == 0, res.output
    return tmp / "dist"


@pytest.fixture(scope="module")
def x86_report(out_dir) -> dict:
    res = invoke("check", out_dir, "--target", "x86_64", *FAST, "--json")
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


# ------------------------------------------------------------------------------------- QEMU


@pytest.fixture(scope="module")
def arm64_cache(tmp_path_factory):
    """EDGEPACK_CACHE with a built arm64 sysroot, for the whole module."""
    if shutil.which("qemu-aarch64") is None:
        pytest.skip("qemu-aarch64 not installed (apt-get install qemu-user)")
    from exporter.common.progress import make_progress
    from exporter.targets.sysroot import build

    cache = os.environ.get("EDGEPACK_CACHE") or str(tmp_path_factory.mktemp("cache"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGEPACK_CACHE", cache)
        try:
            with make_progress(quiet=True) as progress:
                build("arm64", progress=progress)
        except RuntimeCheckError as exc:
            if any(w in str(exc) for w in ("apt-get update", "download", "mirror")):
                pytest.skip(f"cannot download the ARM64 sysroot: {exc}")
            raise
        yield Path(cache)


def qemu_check(out_dir: Path, target: str) -> dict:
    res = invoke("check", out_dir, "--target", target, *FAST, "--force", "--json")
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


@pytest.fixture(scope="module")
def qemu_reports(arm64_cache, out_dir) -> dict:
    return {t: qemu_check(out_dir, t) for t in ("rpi4-qemu", "rpi5-qemu")}


@pytest.mark.slow
@pytest.mark.parametrize("target,part", [("rpi4-qemu", "0xd08"), ("rpi5-qemu", "0xd0b")])
def test_qemu_check_matches_x86(qemu_reports, x86_report, target, part):
    report = qemu_reports[target]
    assert report["passed"] is True, report["reasons"]
    assert report["cpu"]["machine"] == "aarch64" and report["cpu"]["cpu_part"] == part
    assert report["target"]["device"] == "qemu"
    x86 = {a["path"]: a for a in x86_report["artifacts"]}
    formats = {a["format"] for a in report["artifacts"]}
    assert formats == {"onnx", "tflite"}
    for a in report["artifacts"]:
        ref = x86[a["path"]]
        assert a["status"] == "ok", a
        assert a["samples"] == ref["samples"] == 120
        assert a["accuracy"] == ref["accuracy"] and a["agreement"] == ref["agreement"]
        assert abs(a["max_abs_diff"] - ref["max_abs_diff"]) <= 1e-4
        assert a["emulated"] is True and a["latency_ms"]["emulated"] is True
        assert "max_latency_p90_ms" not in a["budgets"]
        assert a["instructions_per_inference"] > 1000


def guest_logits(view: Path, cpu: str, artifact: Path, batch: Path, dest: Path) -> np.ndarray:
    """The artifact's logits on every eval image, computed by the ARM64 guest."""
    runner = rq.QemuRunner(
        qemu=shutil.which("qemu-aarch64"), sysroot=view, views_dir=view.parent, cpu=cpu
    )
    code = (
        "import sys, numpy as np; from pathlib import Path; "
        "from runtime_check.evaluate import logits_for; "
        "np.save(sys.argv[3], logits_for(Path(sys.argv[1]), sys.argv[2]))"
    )
    cmd = runner.command(view, None, ["-c", code, str(artifact), str(batch), str(dest)])
    subprocess.run(cmd, env=runner.environment(None), check=True, timeout=300, capture_output=True)
    return np.load(dest)


@pytest.mark.slow
@pytest.mark.parametrize("cpu", ["cortex-a72", "cortex-a76"])
def test_guest_logits_equal_x86(arm64_cache, out_dir, tmp_path, cpu):
    """Same top-1 on every eval image and logits within 1e-4 of this machine's, per artifact;
    int8 TFLite (XNNPACK) logits bit for bit."""
    from exporter.targets.sysroot import sysroot_for

    sr = sysroot_for("arm64")
    view = rq.ensure_view(sr.sysroot, sr.views, cpu)
    for name in ("model.fp32.onnx", "model.int8.onnx", "model.fp32.tflite", "model.int8.tflite"):
        host = evaluate.logits_for(out_dir / name, out_dir / "eval_batch.npz")
        guest = guest_logits(
            view, cpu, out_dir / name, out_dir / "eval_batch.npz", tmp_path / f"{name}.npy"
        )
        assert guest.shape == host.shape == (120, 10)
        assert (guest.argmax(1) == host.argmax(1)).all(), name
        assert np.abs(guest - host).max() <= 1e-4, name
        if name == "model.int8.tflite":
            assert np.array_equal(guest, host), name


@pytest.mark.slow
def test_instruction_counts_repeat(qemu_reports, out_dir):
    """The guest instruction count of an inference is the same, run after run."""
    rerun = invoke(
        "check",
        out_dir,
        "--target",
        "rpi4-qemu",
        *FAST,
        "--force",
        "--json",
        "--set",
        'runtime.runtimes=["litert"]',
    )
    assert rerun.exit_code == 0, rerun.output
    again = {
        a["path"]: a["instructions_per_inference"]
        for a in json.loads(rerun.output)["artifacts"]
        if a["status"] == "ok"
    }
    first = {
        a["path"]: a["instructions_per_inference"]
        for a in qemu_reports["rpi4-qemu"]["artifacts"]
        if a["path"] in again
    }
    assert first and first.keys() == again.keys()
    for path, count in first.items():
        assert again[path] == count, (path, count, again[path])


def test_missing_sysroot_is_one_line(out_dir, tmp_path):
    if shutil.which("qemu-aarch64") is None:
        pytest.skip("qemu-aarch64 not installed")
    res = invoke(
        "check",
        out_dir,
        "--target",
        "rpi4-qemu",
        "--force",  # the session's earlier checks wrote checks/rpi4-qemu.json
        "-q",
        env={"EDGEPACK_CACHE": str(tmp_path / "empty")},
    )
    assert_one_line_error(res, "not built", "edgepack target setup arm64")


def test_corrupt_sysroot_offers_force(out_dir, tmp_path):
    if shutil.which("qemu-aarch64") is None:
        pytest.skip("qemu-aarch64 not installed")
    root = tmp_path / "cache" / "arm64"
    (root / "sysroot").mkdir(parents=True)
    (root / "stamp.json").write_text(json.dumps({"format": 1}))
    res = invoke(
        "check",
        out_dir,
        "--target",
        "rpi5-qemu",
        "--force",  # the session's earlier checks wrote checks/rpi5-qemu.json
        "-q",
        env={"EDGEPACK_CACHE": str(tmp_path / "cache")},
    )
    assert_one_line_error(res, "python3.11 is missing", "edgepack target setup arm64 --force")
    res = invoke("target", "status", env={"EDGEPACK_CACHE": str(tmp_path / "cache")})
    assert res.exit_code == 0 and "not usable" in res.output and "--force" in res.output


def test_qemu_recipes_refuse_max_and_latency_budgets(tmp_path):
    for cpu in ("max", "max,sme=off"):
        with pytest.raises(RecipeError, match="'max' is refused"):
            load_recipe("rpi4-qemu", [f"device.cpu={json.dumps(cpu)}"])
    with pytest.raises(RecipeError, match="not a supported QEMU CPU model"):
        load_recipe("rpi4-qemu", ['device.cpu="cortex-a9"'])
    with pytest.raises(RecipeError, match="max_latency_p90_ms: latency under QEMU is emulated"):
        load_recipe("rpi5-qemu", ["budgets.max_latency_p90_ms=50"])
    for name in ("rpi4-qemu", "rpi5-qemu", "arm64-a53-qemu", "rpi4", "rpi5"):
        r = load_recipe(name)
        assert r.description and r.runtime.runtimes and r.runtime.threads == 1
    assert load_recipe("arm64-a53-qemu").device.cpu == "cortex-a53"


def test_cpuinfo_and_view(tmp_path):
    text = rq.cpuinfo_text("cortex-a76")
    assert text.count("processor\t:") == 4 and "CPU part\t: 0xd0b" in text
    assert "asimddp" in text and "asimddp" not in rq.cpuinfo_text("cortex-a72")
    sysroot = tmp_path / "root"
    (sysroot / "usr" / "bin").mkdir(parents=True)
    (sysroot / "lib").mkdir()
    a72 = rq.ensure_view(sysroot, tmp_path / "views", "cortex-a72")
    a53 = rq.ensure_view(sysroot, tmp_path / "views", "cortex-a53")
    assert "0xd08" in (a72 / "proc" / "cpuinfo").read_text()
    assert "0xd03" in (a53 / "proc" / "cpuinfo").read_text()
    assert (a72 / "usr").resolve() == (sysroot / "usr").resolve()
    assert rq.ensure_view(sysroot, tmp_path / "views", "cortex-a72") == a72
    assert rq.INSN_FILE_ENV == evaluate.INSN_FILE_ENV


# -------------------------------------------------------------------------------------- SSH


def ssh_check(out_dir, host, config, *extra):
    return invoke(
        "check",
        out_dir,
        "--target",
        "rpi5",
        "--host",
        host,
        "--set",
        f'device.ssh_options=["-F","{config}"]',
        "--set",
        "device.connect_timeout_s=5",
        "--set",
        "device.timeout_s=120",
        *FAST,
        "--force",
        *extra,
    )


def _leftovers() -> set[str]:
    return {p.name for p in Path("/tmp").glob("edgepack-rc.*")}


def test_ssh_check_equals_local(sshd, out_dir, x86_report):
    host, d = sshd
    before = _leftovers()
    res = ssh_check(
        out_dir,
        host,
        d / "ssh_config.good",
        "--set",
        f"device.python={json.dumps(sys.executable)}",
        "--json",
    )
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["target"]["host"] == host and report["target"]["device"] == "ssh"
    local = {a["path"]: a for a in x86_report["artifacts"]}
    assert {a["path"] for a in report["artifacts"]} == set(local)
    for a in report["artifacts"]:
        ref = local[a["path"]]
        assert a["status"] == "ok"
        for key in ("accuracy", "agreement", "max_abs_diff", "samples", "bytes", "runtime"):
            assert a[key] == ref[key], key
        assert a["latency_ms"]["p50"] > 0 and a["emulated"] is False
    assert _leftovers() <= before


@pytest.mark.parametrize(
    "case,fragments",
    [
        ("bad", ("host key has CHANGED", "ssh-keygen -R")),
        ("unknown", ("host key unknown",)),
        ("closed", ("unreachable", "Connection refused")),
        ("bare-python", ("numpy is not installed", "pip install numpy")),
    ],
)
def test_ssh_failures_are_one_line(sshd, out_dir, tmp_path, case, fragments):
    host, d = sshd
    config, extra = d / "ssh_config.good", []
    if case in ("bad", "unknown"):
        config = d / f"ssh_config.{case}"
    elif case == "closed":
        host = f"{host.split('@')[0]}@127.0.0.1:{free_port()}"
    else:
        # A python without numpy or runtimes: a fresh venv of this interpreter, no pip.
        subprocess.run(
            [sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True
        )
        extra = ["--set", f'device.python="{tmp_path / "bare" / "bin" / "python"}"']
    before = _leftovers()
    started = time.monotonic()
    res = ssh_check(out_dir, host, config, *extra, "-q")
    assert_one_line_error(res, *fragments)
    assert time.monotonic() - started < 60
    assert _leftovers() <= before, "a temp dir was left on the device"


def test_ssh_target_needs_a_host(out_dir):
    res = invoke("check", out_dir, "--target", "rpi4", "-q")
    assert_one_line_error(res, "runs over SSH: give --host user@host[:port]")
