"""Helpers shared by test modules: the in-process CLI and its one-line error check, the
BatchNorm randomizer, a free loopback port. Fixtures live in the conftest.py files; test
modules import from here, never from one another."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from click.testing import CliRunner, Result

from exporter.cli import cli

ROOT = Path(__file__).resolve().parent.parent
# The installed console script, for cases that need a real process (signals, libraries that
# write to the process's own stderr, which click's in-process capture does not see).
EDGEPACK = ROOT / ".venv" / "bin" / "edgepack"


def invoke(*args: object, env: Mapping[str, str] | None = None) -> Result:
    """``edgepack ARGS`` in this process; ``.output`` holds stdout and stderr together and an
    unexpected exception propagates with its traceback instead of becoming an exit code."""
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False, env=env)


def assert_one_line_error(res: object, *fragments: str, code: int = 2) -> str:
    """The command failed with ``code`` and printed exactly one non-blank line, ``error: ...``,
    containing every fragment, and no traceback. Returns that line."""
    assert res.exit_code == code, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert "Traceback" not in res.output
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])
    return lines[0]


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz, read and the file closed (``np.load`` alone keeps it open)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def free_port() -> int:
    """A loopback TCP port nothing listens on (just bound and released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def randomize_batchnorm(model: torch.nn.Module, seed: int | None = 0) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics and affine terms, so a folding error would show; returns
    the model in eval mode. Draws from a generator seeded with ``seed``, or from torch's global
    generator when ``seed`` is None (to continue a sequence the caller seeded)."""
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.uniform_(-0.5, 0.5, generator=gen)
    return model.eval()
