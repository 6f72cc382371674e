"""Fixtures shared across the tree: a tiny npz data set and a throw-away sshd on 127.0.0.1."""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import free_port, invoke


@pytest.fixture(scope="session", autouse=True)
def _own_export_cache(tmp_path_factory):
    """The suite's ONNX exports are cached in a directory of its own, removed with the session's
    temp files: a run neither reads a user's ~/.cache/edgepack (stale or foreign entries would make
    its figures depend on the machine) nor leaves anything in it. CLI subprocesses inherit it."""
    saved = os.environ.get("EDGEPACK_CACHE_DIR")
    os.environ["EDGEPACK_CACHE_DIR"] = str(tmp_path_factory.mktemp("onnx-cache"))
    yield
    if saved is None:
        os.environ.pop("EDGEPACK_CACHE_DIR", None)
    else:
        os.environ["EDGEPACK_CACHE_DIR"] = saved


@pytest.fixture
def tiny_npz(tmp_path) -> Path:
    """A 3-class, 12x10 RGB npz data set with a learnable pattern (class = brightest third)."""
    rng = np.random.default_rng(0)
    n = 90
    labels = np.repeat(np.arange(3), n // 3)
    images = rng.integers(0, 60, size=(n, 12, 10, 3)).astype(np.uint8)
    for i, lab in enumerate(labels):
        images[i, :, :, lab] += 150
    path = tmp_path / "tiny.npz"
    np.savez(path, images=images, labels=labels, classes=np.array(["r", "g", "b"]))
    return path


def _ssh_config(path: Path, keys: Path, known_hosts: Path) -> Path:
    path.write_text(
        f"Host *\n  IdentityFile {keys / 'id'}\n  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {known_hosts}\n  GlobalKnownHostsFile /dev/null\n"
        "  LogLevel ERROR\n"
    )
    return path


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """A real sshd on 127.0.0.1 with throw-away keys; yields (user@host:port, dir with configs).

    The dir holds ``ssh_config.{good,bad,unknown}`` (known_hosts with the right key, another
    key, none), the client key ``id`` and a key the server does not accept, ``otherkey``.
    Tests only read it: one server serves the whole session.
    """
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
    port = free_port()
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


@pytest.fixture(scope="session")
def digits_seed(tmp_path_factory) -> Path:
    """The seed CNN trained 4 epochs on digits through the CLI, as a user would: the weights
    and the record `edgepack train` writes beside them. Read-only for the tests that share it."""
    tmp = tmp_path_factory.mktemp("digits-seed")
    res = invoke(
        "train", "--model", "seed-cnn", "--data", "digits", "--epochs", "4", "--out",
        tmp / "seed.pt", "-q",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert (tmp / "seed.pt").is_file() and (tmp / "seed.pt.json").is_file()
    return tmp / "seed.pt"


@pytest.fixture(scope="session")
def mcu_digits(digits_seed, tmp_path_factory) -> Path:
    """The trained seed CNN run through `--target nano33ble` (TFLM): an output directory with
    model.int8.tflite validated under TensorFlow Lite Micro. Read-only for the tests that share
    it."""
    out = tmp_path_factory.mktemp("mcu-digits") / "dist"
    res = invoke(
        "run", "--model", "seed-cnn", "--weights", digits_seed, "--target", "nano33ble",
        "--out", out, "-q",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    return out
