"""ONNX -> ORT format (``.ort`` + ``required_operators.config``) for ONNX Runtime Mobile.

onnxruntime's own converter does the work, in a child process with a timeout so that a hung or
crashing converter cannot take edgepack down with it.

Determinism: the converter lays out the flatbuffer in the iteration order of hash maps whose
seed comes from memory addresses, so two conversions of one model differ in bytes (not in
content). The child therefore runs with address-space randomisation off (Linux
``personality(ADDR_NO_RANDOMIZE)``), from a fixed-shape scratch folder with fixed file names and
a fixed environment; then its output is the same bytes every time. Where the personality call is
unavailable the conversion still runs, and ``deterministic`` says so.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from exporter.errors import PackageError

ORT_MODEL = "model.ort"
ORT_CONFIG = "required_operators.config"
_ADDR_NO_RANDOMIZE = 0x0040000
_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class OrtConversion:
    model: bytes
    config: str
    seconds: float
    deterministic: bool


def _can_disable_aslr() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        current = libc.personality(0xFFFFFFFF)  # query without changing anything
        return current != -1
    except (OSError, AttributeError):
        return False


# A fresh single-threaded interpreter switches randomisation off for itself and then execs the
# converter (the personality survives exec); safer than a preexec_fn in a threaded parent.
_LAUNCHER = (
    "import ctypes, os, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    f"libc.personality(libc.personality(0xFFFFFFFF) | {_ADDR_NO_RANDOMIZE})\n"
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n"
)


def convert_to_ort(
    onnx_path: Path, target_platform: str = "arm", timeout_s: float = _TIMEOUT_S
) -> OrtConversion:
    """Convert ``onnx_path`` with fixed (build-time) optimizations for ``target_platform``."""
    deterministic = _can_disable_aslr()
    with tempfile.TemporaryDirectory(prefix="edgepack-ort-") as scratch:
        work = Path(scratch)
        # A copy under a fixed name: the converter writes temporaries beside its input, and
        # the input's path would otherwise reach the config file and the memory layout.
        shutil.copyfile(onnx_path, work / "model.onnx")
        convert = [
            "-m",
            "onnxruntime.tools.convert_onnx_models_to_ort",
            "model.onnx",
            "--output_dir",
            "ort",
            "--target_platform",
            target_platform,
            "--optimization_style",
            "Fixed",
        ]
        cmd = (
            [sys.executable, "-c", _LAUNCHER, *convert]
            if deterministic
            else [sys.executable, *convert]
        )
        env = {
            "PATH": os.environ.get("PATH", ""),
            "PYTHONHASHSEED": "0",
            "OMP_NUM_THREADS": "1",
            "LC_ALL": "C",
        }
        start = time.perf_counter()
        try:
            proc = subprocess.run(
                cmd,
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise PackageError(
                f"ORT conversion of {onnx_path.name} took more than {timeout_s:.0f} s"
            ) from None
        seconds = time.perf_counter() - start
        model, config = work / "ort" / "model.ort", work / "ort" / "model.required_operators.config"
        if proc.returncode != 0 or not model.is_file() or not config.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise PackageError(f"ORT conversion of {onnx_path.name} failed: {tail[0]}")
        return OrtConversion(
            model.read_bytes(), _clean_config(config.read_text()), seconds, deterministic
        )


def _clean_config(text: str) -> str:
    """The operator config without the scratch path the converter writes in its comment."""
    lines = [f"# - {ORT_MODEL}" if line.startswith("# - ") else line for line in text.splitlines()]
    return "\n".join(lines) + "\n"
