"""QEMU (ARM64) and SSH targets, end to end through `edgepack check`, against x86 results.

The QEMU tests build the ARM64 sysroot once per session (~15 s; reused from $EDGEPACK_CACHE when
that is set) and skip only when qemu-aarch64 is absent or the download is impossible. The SSH
tests start a real sshd on 127.0.0.1 with throw-away keys; the "device" is this machine.
"""

from __future__ import annotations

import getpass
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from exporter.cli import cli
from exporter.errors import RecipeError, RuntimeCheckError
from exporter.recipe import load_recipe
from runtime_check import evaluate
from runtime_check import qemu as rq

FAST = ["--set", "runtime.runs=10", "--set", "runtime.warmup=1"]
HAS_TFLITE = importlib.util.find_spec("exporter.tflite") is not None


def invoke(*args, env=None):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False, env=env)


def one_line_error(res, *fragments):
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory) -> Path:
    """A trained seed CNN on digits exported to ONNX (+ TFLite when the writer is there)."""
    tmp = tmp_path_factory.mktemp("remote")
    res = invoke(
        "train",
        "--model",
        "seed-cnn",
        "--data",
        "digits",
        "--epochs",
        "4",
        "--out",
        tmp / "seed.pt",
        "-q",
    )
    assert res.exit_code == 0, res.output
    formats = '["onnx","tflite"]' if HAS_TFLITE else '["onnx"]'
    res = invoke(
        "run",
        "--model",
        "seed-cnn",
        "--weights",
        tmp / "seed.pt",
        "--data",
        "digits",
        "--out",
        tmp / "dist",
        "--set",
        f"export.formats={formats}",
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
    assert formats == ({"onnx", "tflite"} if HAS_TFLITE else {"onnx"})
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
    names = [
        "model.fp32.onnx",
        "model.int8.onnx",
        *(["model.fp32.tflite", "model.int8.tflite"] if HAS_TFLITE else []),
    ]
    for name in names:
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
    runtime = "litert" if HAS_TFLITE else "onnxruntime"
    rerun = invoke(
        "check",
        out_dir,
        "--target",
        "rpi4-qemu",
        *FAST,
        "--force",
        "--json",
        "--set",
        f'runtime.runtimes=["{runtime}"]',
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
        "-q",
        env={"EDGEPACK_CACHE": str(tmp_path / "empty")},
    )
    one_line_error(res, "not built", "edgepack target setup arm64")


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
        "-q",
        env={"EDGEPACK_CACHE": str(tmp_path / "cache")},
    )
    one_line_error(res, "python3.11 is missing", "edgepack target setup arm64 --force")
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ssh_config(path: Path, keys: Path, known_hosts: Path) -> Path:
    path.write_text(
        f"Host *\n  IdentityFile {keys / 'id'}\n  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {known_hosts}\n  GlobalKnownHostsFile /dev/null\n"
        "  LogLevel ERROR\n"
    )
    return path


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A real sshd on 127.0.0.1 with throw-away keys; yields (host, dir with configs)."""
    if not (
        Path("/usr/sbin/sshd").is_file() and shutil.which("ssh") and shutil.which("ssh-keygen")
    ):
        pytest.skip("needs openssh-server and openssh-client (apt-get install openssh-server)")
    d = tmp_path_factory.mktemp("sshd")
    for name in ("hostkey", "id", "otherkey"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True
        )
    shutil.copy(d / "id.pub", d / "authorized_keys")
    port = _free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'hostkey'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPidFile {d / 'sshd.pid'}\nUsePAM no\n"
        "StrictModes no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nLogLevel ERROR\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True) if os.geteuid() == 0 else None
    proc = subprocess.Popen(
        ["/usr/sbin/sshd", "-D", "-e", "-f", str(d / "sshd_config")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 10
    while True:
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.skip(f"sshd did not start: {proc.stderr.read().decode()[-300:]}")
        time.sleep(0.1)
    hostkey = " ".join((d / "hostkey.pub").read_text().split()[:2])
    other = " ".join((d / "otherkey.pub").read_text().split()[:2])
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {hostkey}\n")
    (d / "known_bad").write_text(f"[127.0.0.1]:{port} {other}\n")
    (d / "known_empty").write_text("")
    for name, known in (("good", "known_hosts"), ("bad", "known_bad"), ("unknown", "known_empty")):
        _ssh_config(d / f"ssh_config.{name}", d, d / known)
    try:
        yield f"{getpass.getuser()}@127.0.0.1:{port}", d
    finally:
        proc.terminate()
        proc.wait(timeout=10)


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
        assert a["latency_ms"]["p50"] > 0 and "emulated" not in a
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
        host = f"{host.split('@')[0]}@127.0.0.1:{_free_port()}"
    else:
        # A python without numpy or runtimes: a fresh venv of this interpreter, no pip.
        subprocess.run(
            [sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True
        )
        extra = ["--set", f'device.python="{tmp_path / "bare" / "bin" / "python"}"']
    before = _leftovers()
    started = time.monotonic()
    res = ssh_check(out_dir, host, config, *extra, "-q")
    one_line_error(res, *fragments)
    assert time.monotonic() - started < 60
    assert _leftovers() <= before, "a temp dir was left on the device"


def test_ssh_target_needs_a_host(out_dir):
    res = invoke("check", out_dir, "--target", "rpi4", "-q")
    one_line_error(res, "runs over SSH: give --host user@host[:port]")
