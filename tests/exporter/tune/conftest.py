"""A real PostgreSQL server for the distributed study: initdb into a temp dir, 127.0.0.1 on a
free port, stopped and removed at teardown. initdb refuses to run as root, so as root the
server runs as the `postgres` user Debian's package creates."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.helpers import free_port

# Small, quick trials: a few timed runs, a 120-image tuning split, at most one fine-tune epoch.
TINY = (
    "--set", "runtime.runs=3",
    "--set", "runtime.warmup=1",
    "--set", "tune.samples=120",
    "--set", "tune.epochs=[0, 1]",
    "--set", "eval.samples=200",
)  # fmt: skip


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@pytest.fixture(scope="session")
def postgres_url():
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries absent (/usr/lib/postgresql/*/bin/initdb)")
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="pg-tune-test-"))
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    data = root / "data"
    run = lambda *cmd: subprocess.run([*as_user, *map(str, cmd)], check=True, capture_output=True)  # noqa: E731
    try:
        run(bindir / "initdb", "-D", data, "-A", "trust", "-U", "tuner", "--no-sync")
        run(
            bindir / "pg_ctl", "-D", data, "-l", root / "log", "-w", "-o",
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start",
        )  # fmt: skip
        run(bindir / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "tuner", "edgepack")
        yield f"postgresql://tuner@127.0.0.1:{port}/edgepack"
    finally:
        subprocess.run(
            [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(root, ignore_errors=True)
