"""The bad-input catalogue's harness: a case builds a :class:`Call`; :func:`check_case` runs it.

Every case must end in ONE line ``error: ...`` on stderr that names the problem, exit code 2, no
traceback, and must leave the disk as it found it: no artifact, no ``.name.*.tmp`` sibling, no
edgepack temp directory, no ``edgepack-rc.*`` directory on the SSH device, and an existing
``--out`` (given with ``--force``) untouched. A case marked ``ok`` must succeed instead.

Each ``tests/robustness/test_*.py`` that holds cases lists them in a module-level ``CASES``
(``side/name`` ids); ``test_bad_inputs.test_catalogue_matches_its_documentation`` counts them all
against docs/robustness.md.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from exporter.outdir import OUTPUT_MARKER
from tests.helpers import EDGEPACK, assert_one_line_error, invoke
from tests.robustness.options import FAST


@dataclass
class Call:
    """One CLI invocation of a case and what it must produce."""

    args: list
    fragments: tuple[str, ...]  # each must appear in the single error line
    env: dict | None = None
    ok: bool = False  # the case must succeed (exit 0 or 1 with a report) instead of failing
    after: Callable[[object], None] | None = None  # extra checks, given the click result
    skip: str | None = None
    # Run `.venv/bin/edgepack` in a real process: libraries that log or print to the real
    # stderr (torch's loggers, native runtimes) bypass click's in-process capture.
    process: bool = False


@dataclass
class Ctx:
    """What a case builder may use: a private directory and (lazily) the shared fixtures."""

    tmp: Path
    request: pytest.FixtureRequest
    out: Path = field(init=False)

    def __post_init__(self):
        # An existing output directory that every failing `run` is asked to --force over: it
        # must survive the failure untouched.
        self.out = self.tmp / "out"
        self.out.mkdir()
        (self.out / "keep.txt").write_text("the user's previous run")
        # An earlier edgepack output (it carries the marker): --force may replace it.
        (self.out / OUTPUT_MARKER).write_text("{}")

    def fixture(self, name: str):
        return self.request.getfixturevalue(name)

    @property
    def weights(self) -> Path:
        return self.fixture("seed_weights")

    def run(self, *args) -> list:
        return ["run", *args, "--out", self.out, "--force", "-q", *FAST]

    def seeded(self, *args) -> list:
        """`run` of the trained seed CNN: any error must come from ``args``."""
        return self.run("--model", "seed-cnn", "--weights", self.weights, *args)

    def write(self, name: str, data: bytes | str) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
        return path

    def copy_out(self) -> Path:
        """A private copy of the session's output directory, for `edgepack check` cases."""
        dest = self.tmp / "dist"
        shutil.copytree(self.fixture("seed_out"), dest)
        return dest


def random_bytes(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (bytecode caches aside) with a hash of its content."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def device_leftovers() -> set[str]:
    """The SSH runner's temp dirs on the 'device' (this machine's /tmp)."""
    return {p.name for p in Path("/tmp").glob("edgepack-rc.*")}


def new_device_leftovers(before: set[str]) -> set[str]:
    # Other test sessions may share this /tmp: only a directory that stays is a leftover.
    new = device_leftovers() - before
    if new:
        time.sleep(3)
        new &= device_leftovers()
    return new


def npz(ctx: Ctx, name: str, images: np.ndarray, labels: np.ndarray) -> Path:
    path = ctx.tmp / name
    np.savez(path, images=images, labels=labels)
    return path


def digits_like(n: int, h: int = 8, w: int = 8, c: int = 1, classes: int = 10) -> tuple:
    rng = np.random.default_rng(n)
    return (
        rng.integers(0, 256, (n, h, w, c), dtype=np.uint8),
        np.arange(n, dtype=np.int64) % classes,
    )


def check_case(builder: Callable[[Ctx], Call], tmp_path: Path, request, monkeypatch) -> None:
    """Run one catalogue case and assert what every case must hold (see the module doc)."""
    case_dir = tmp_path / "case"
    case_dir.mkdir()
    ctx = Ctx(case_dir, request)
    call = builder(ctx)
    if call.skip:
        pytest.skip(call.skip)
    # edgepack's scratch directories (tempfile's, in-process and in child processes) go to a
    # private, empty directory, so a leftover is seen whatever else uses /tmp meanwhile.
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    env = {"TMPDIR": str(scratch), **(call.env or {})}
    before, device_before = snapshot(case_dir), device_leftovers()
    res = run_process(call.args, env) if call.process else invoke(*call.args, env=env)
    if call.ok:
        assert res.exit_code in (0, 1), res.output
        assert (ctx.out / "report.json").is_file() and not (ctx.out / "keep.txt").exists()
    else:
        assert_one_line_error(res, *call.fragments)
        assert snapshot(case_dir) == before, "a file was written, changed or left behind"
    assert not [p for p in ctx.out.parent.iterdir() if p.name.startswith(".out.")], (
        "a temp sibling of --out was left behind"
    )
    # Caches other libraries keep in $TMPDIR by design, not edgepack temp files: LiteRT's
    # session-id file .ses and torch's compile cache torchinductor_<user>.
    left = [
        p.name
        for p in scratch.iterdir()
        if p.name != ".ses" and not p.name.startswith("torchinductor_")
    ]
    assert left == [], f"a temp file or directory was left behind: {left}"
    assert not new_device_leftovers(device_before), "an edgepack-rc.* dir was left on the device"
    if call.after:
        call.after(res)


@dataclass
class _ProcessResult:
    """What assert_one_line_error reads, from a real process (stdout + stderr)."""

    exit_code: int
    output: str


def run_process(args, env) -> _ProcessResult:
    proc = subprocess.run(
        [str(EDGEPACK), *(str(a) for a in args)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
        check=False,
    )
    return _ProcessResult(proc.returncode, proc.stdout + proc.stderr)
