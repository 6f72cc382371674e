"""What is on disk stays safe: an output never overlaps an input or the working directory, one
writer per output, ``--force`` replaces only edgepack's own directories, a signal or a timeout
leaves nothing behind (here or on an SSH device), and a check that cannot be written is refused
before it runs.

Harness cases in ``CASES``; signals, concurrency and the SSH timeout need real processes and
have tests of their own below.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from exporter.outdir import OUTPUT_MARKER
from tests.helpers import EDGEPACK, assert_one_line_error, free_port, invoke
from tests.robustness.harness import Call, Ctx, check_case, digits_like, npz
from tests.robustness.options import FAST, FP32_ONLY

# ------------------------------------------------------------------------------ output side


def _imagefolder(root: Path, classes: int = 2, per_class: int = 12) -> Path:
    from PIL import Image

    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("L", (8, 8), 20 * i + 100 * c).save(root / f"c{c}" / f"{i}.png")
    return root


def _out_is_the_data(ctx: Ctx) -> Call:
    # With --force, the old code deleted the user's images when it replaced --out.
    _imagefolder(ctx.out)
    return Call(
        ctx.run("--model", "seed-cnn", "--data", f"imagefolder:{ctx.out}"),
        ("--out", "is the --data input itself"),
    )


def _out_inside_the_data(ctx: Ctx) -> Call:
    # The old code wrote the output into the folder: one more class on the next run.
    imgs = _imagefolder(ctx.tmp / "imgs")
    return Call(
        [
            "run",
            "--model",
            "seed-cnn",
            "--data",
            f"imagefolder:{imgs}",
            "--out",
            imgs / "out",
            "-q",
            *FAST,
            *FP32_ONLY,
        ],
        ("is inside the --data directory", str(imgs)),
    )


def _out_contains_the_weights(ctx: Ctx) -> Call:
    shutil.copy(ctx.weights, ctx.out / "seed.pt")
    shutil.copy(ctx.weights.with_suffix(".pt.json"), ctx.out / "seed.pt.json")
    return Call(
        ctx.run("--model", "seed-cnn", "--weights", ctx.out / "seed.pt"),
        ("contains the --weights input", "seed.pt"),
    )


def _out_contains_the_eval_data(ctx: Ctx) -> Call:
    path = npz(ctx, "out/eval.npz", *digits_like(40))
    return Call(ctx.seeded("--eval-data", f"npz:{path}"), ("contains the --eval-data input",))


def _out_contains_the_recipe(ctx: Ctx) -> Call:
    recipe = ctx.write("out/mine.toml", 'extends = "x86_64"\ndescription = "mine"\n')
    return Call(ctx.seeded("--target", recipe), ("contains the --target input", "mine.toml"))


def _out_contains_the_model_file(ctx: Ctx) -> Call:
    ctx.write(
        "out/net.py",
        "from exporter.models.zoo import BUILTIN\n\n"
        "def make(**kw):\n    return BUILTIN['seed-cnn'](**kw)\n",
    )
    return Call(
        ctx.run("--model", f"{ctx.out / 'net.py'}:make"), ("contains the --model input", "net.py")
    )


def _not_an_edgepack_output(ctx: Ctx) -> Call:
    # A directory of the user's (no marker): --force must not replace it. The old code did.
    (ctx.out / OUTPUT_MARKER).unlink(missing_ok=True)
    return Call(ctx.seeded(), ("is not an edgepack output", OUTPUT_MARKER))


def _read_only_filesystem(ctx: Ctx) -> Call:
    mnt = ctx.tmp / "ro"
    mnt.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True
    )
    if proc.returncode != 0:
        return Call([], (), skip=f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    ctx.request.addfinalizer(lambda: subprocess.run(["umount", str(mnt)], check=False))
    subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
    out = mnt / "out"
    return Call(
        [
            "run",
            "--model",
            "seed-cnn",
            "--weights",
            ctx.weights,
            "--out",
            out,
            "-q",
            *FAST,
            *FP32_ONLY,
        ],
        ("cannot write", str(out), "read-only file system"),
    )


def _train_out_is_the_data(ctx: Ctx) -> Call:
    # The old code trained, then overwrote the data set with the weights.
    path = npz(ctx, "data.npz", *digits_like(60))
    return Call(
        [
            "train",
            "--model",
            "seed-cnn",
            "--data",
            f"npz:{path}",
            "--epochs",
            "1",
            "-q",
            "--out",
            path,
            "--force",
        ],
        ("--out", "is the --data input itself"),
    )


# ------------------------------------------------------------------------------ target side


def _check_refused_before_validating(ctx: Ctx) -> Call:
    # Validation over SSH to a closed port would fail: an existing report must be refused first.
    out = ctx.copy_out()
    (out / "checks").mkdir(exist_ok=True)
    (out / "checks" / "rpi5.json").write_text("{}")
    ctx.write("ssh_config", "Host *\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n")
    return Call(
        [
            "check",
            out,
            "--target",
            "rpi5",
            "--host",
            f"nobody@127.0.0.1:{free_port()}",
            "-q",
            "--set",
            f'device.ssh_options=["-F","{ctx.tmp / "ssh_config"}"]',
        ],
        ("rpi5.json already exists", "--force"),
    )


CASES: list[tuple[str, Callable[[Ctx], Call]]] = [
    ("output/out-is-the-data-dir", _out_is_the_data),
    ("output/out-inside-the-data-dir", _out_inside_the_data),
    ("output/out-contains-the-weights", _out_contains_the_weights),
    ("output/out-contains-the-eval-data", _out_contains_the_eval_data),
    ("output/out-contains-the-recipe", _out_contains_the_recipe),
    ("output/out-contains-the-model-file", _out_contains_the_model_file),
    ("output/force-over-a-user-directory", _not_an_edgepack_output),
    ("output/read-only-filesystem", _read_only_filesystem),
    ("output/train-out-is-the-data-file", _train_out_is_the_data),
    ("target/check-existing-refused-before-validating", _check_refused_before_validating),
]


@pytest.mark.parametrize("builder", [b for _, b in CASES], ids=[i for i, _ in CASES])
def test_case(builder, tmp_path, request, monkeypatch):
    check_case(builder, tmp_path, request, monkeypatch)


# ------------------------------------------------------------------ the working directory


@pytest.mark.parametrize("out", [".", ".."])
def test_out_is_the_working_directory_or_above(out, tmp_path, seed_weights, monkeypatch):
    """`--out .` (or above) with --force: refused at once, even where the directory carries the
    marker; the old code ran the whole pipeline and then failed with a traceback."""
    work = tmp_path / "work" / "sub"
    work.mkdir(parents=True)
    for d in (work, work.parent):
        (d / OUTPUT_MARKER).write_text("{}")
        (d / "mine.txt").write_text("the user's file")
    monkeypatch.chdir(work)
    res = invoke(
        "run", "--model", "seed-cnn", "--weights", seed_weights, "--out", out, "--force", "-q"
    )
    assert_one_line_error(res, f"--out {out} is", "current directory")
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(
        ["work", "sub", OUTPUT_MARKER, OUTPUT_MARKER, "mine.txt", "mine.txt"]
    )


# ------------------------------------------------------------------ real processes, signals


def _edgepack(args: list, cwd: Path, env: dict | None = None) -> subprocess.Popen:
    # Started with SIGINT at its default, as an interactive shell would (see
    # test_bad_inputs.test_ctrl_c_during_finetuning).
    return subprocess.Popen(
        [str(EDGEPACK), *(str(a) for a in args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _wait_for(proc: subprocess.Popen, ready: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 120
    while not ready():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"never got to {what}"
        time.sleep(0.05)


def _run_args(seed_weights: Path, out: Path, *extra: str) -> list:
    return [
        "run",
        "--model",
        "seed-cnn",
        "--weights",
        seed_weights,
        "--out",
        out,
        "-q",
        *FAST,
        *FP32_ONLY,
        *extra,
    ]


# Minutes of fine-tuning: the run is still busy when the test acts.
SLOW = ("--set", "compress.finetune.epochs=200", "--set", "compress.finetune.batch_size=8")


def _stderr_lines(stderr: bytes) -> list[str]:
    return [ln for ln in stderr.decode().splitlines() if ln.strip()]


def test_second_run_on_the_same_out_is_refused_and_sigterm_cleans_up(tmp_path, seed_weights):
    """Two `edgepack run` to one --out: the second fails at once naming the first one's pid
    (the old code let both finish and the later silently replaced the earlier). SIGTERM then
    stops the first one like Ctrl-C: exit 143, one line, no hidden temp directory or lock."""
    out = tmp_path / "out"
    first = _edgepack(_run_args(seed_weights, out, *SLOW), tmp_path)
    try:
        _wait_for(
            first,
            lambda: any(p.name.endswith(".tmp") for p in tmp_path.iterdir()),
            "the first run's temp output",
        )
        second = subprocess.run(
            [str(EDGEPACK), *(str(a) for a in _run_args(seed_weights, out))],
            capture_output=True,
            cwd=tmp_path,
            timeout=120,
        )
        assert second.returncode == 2, second.stderr.decode()
        assert _stderr_lines(second.stderr) == [
            f"error: {out} is being written by another edgepack process (pid {first.pid})"
        ]
        assert first.poll() is None, "the second run disturbed the first"
        first.send_signal(signal.SIGTERM)
        _, stderr = first.communicate(timeout=60)
    finally:
        first.kill()
    assert first.returncode == 143, stderr.decode()
    assert _stderr_lines(stderr) == ["error: terminated; no partial output was left"]
    assert list(tmp_path.iterdir()) == [], "a partial output, temp dir or lock was left"


SLOW_EXPORT = textwrap.dedent("""
    import os, time
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self, in_channels=1, num_classes=10):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(),
                nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
            )
            self.fc = nn.Linear(8, num_classes)

        def forward(self, x):
            # Only the ONNX exporter calls forward with something other than a plain tensor:
            # say so, then take long enough to be interrupted there.
            if type(x) is not torch.Tensor:
                open(os.environ["EXPORT_STARTED"], "w").close()
                time.sleep(120)
            return self.fc(self.body(x).mean((2, 3)))
""")


@pytest.mark.parametrize(
    ("sig", "code", "word"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
)
def test_signal_during_onnx_export(sig, code, word, tmp_path):
    """Ctrl-C (or SIGTERM) while torch.onnx exports: reported as such, never as a failed export."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "slow.py").write_text(SLOW_EXPORT)
    started = tmp_path / "export-started"
    proc = _edgepack(
        [
            "run",
            "--model",
            work / "slow.py:Net",
            "--out",
            work / "out",
            "-q",
            *FAST,
            *FP32_ONLY,
            "--set",
            "compress.finetune.epochs=0",
        ],
        work,
        env={"EXPORT_STARTED": str(started)},
    )
    try:
        _wait_for(proc, started.exists, "the ONNX export")
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == code, stderr.decode()
    assert _stderr_lines(stderr) == [f"error: {word}; no partial output was left"]
    assert sorted(p.name for p in work.iterdir()) == ["slow.py"]


# ------------------------------------------------------------------ SSH: nothing left running


def _sleepers(marker: str) -> list[int]:
    proc = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True)
    return [int(p) for p in proc.stdout.split()]


def test_ssh_timeout_stops_the_remote_process(sshd, seed_out, tmp_path):
    """A device whose python hangs where the device's own `timeout` does not reach (the runtime
    probe): after edgepack's timeout no process of the check is left running there (the old code
    left it sleeping), and its temp directory is gone."""
    host, d = sshd
    marker = f"300.{secrets.randbelow(10**6):06d}"  # a unique `sleep` argument to look for
    fake = tmp_path / "fakepy"
    fake.write_text(
        f'#!/bin/sh\ncase "$*" in *edgepack-missing*) exec sleep {marker};; esac\n'
        f'exec {sys.executable} "$@"\n'
    )
    fake.chmod(0o755)
    out = tmp_path / "dist"
    shutil.copytree(seed_out, out)
    before = {p.name for p in Path("/tmp").glob("edgepack-rc.*")}
    try:
        res = invoke(
            "check",
            out,
            "--target",
            "rpi5",
            "--host",
            host,
            "-q",
            "--set",
            f'device.ssh_options=["-F","{d / "ssh_config.good"}"]',
            "--set",
            "device.connect_timeout_s=1",
            "--set",
            "device.timeout_s=1",
            "--set",
            f'device.python="{fake}"',
        )
        assert_one_line_error(res, "timed out")
        assert _sleepers(f"sleep {marker}") == [], "the remote process is still running"
        assert {p.name for p in Path("/tmp").glob("edgepack-rc.*")} <= before
    finally:
        for pid in _sleepers(f"sleep {marker}"):
            os.kill(pid, signal.SIGKILL)
