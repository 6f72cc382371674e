"""Runners: where ``python -m runtime_check`` executes. The shared interface and the local one
here; ``qemu.QemuRunner`` (ARM64 user-mode emulation) and ``ssh.SshRunner`` (a device over SSH)
implement the same ``run``."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


class RunnerError(Exception):
    """The runner could not run the check or read its result."""


@dataclass(frozen=True)
class CheckOptions:
    threads: int = 1
    warmup: int = 10
    runs: int = 100
    delegate: str = "xnnpack"
    timeout_s: float = 1800.0
    # Input layout hint for every artifact of a call (None: the model's shape decides).
    layout: str | None = None
    # "tflm": .tflite artifacts run under TensorFlow Lite Micro (None: by file suffix).
    runtime: str | None = None


class Runner:
    """Runs runtime_check on some machine and returns its parsed JSON."""

    name = "abstract"
    # False: one call checks every artifact (one interpreter start, the eval batch read and
    # decoded once); True: one call per artifact.
    one_artifact_per_call = False

    def run(self, artifacts: list[Path], batch: Path, options: CheckOptions) -> dict:
        raise NotImplementedError

    @staticmethod
    def command_args(artifacts: list[str], batch: str, options: CheckOptions) -> list[str]:
        # Options first and the paths after `--`, taken as they are: a path may hold any
        # character, even start with `-`.
        return [
            "-m",
            "runtime_check",
            f"--batch={batch}",  # one token: a path starting with `-` stays a value
            "--threads",
            str(options.threads),
            "--warmup",
            str(options.warmup),
            "--runs",
            str(options.runs),
            "--delegate",
            options.delegate,
            *(["--layout", options.layout] if options.layout else []),
            *(["--runtime", options.runtime] if options.runtime else []),
            "--",
            *artifacts,
        ]

    @staticmethod
    def parse(stdout: str, stderr: str, returncode: int) -> dict:
        try:
            return json.loads(stdout)
        except json.JSONDecodeError:
            tail = (stderr.strip().splitlines() or [f"exit status {returncode}"])[-1]
            raise RunnerError(f"runtime_check failed: {tail}") from None


class LocalRunner(Runner):
    """This machine, in a fresh interpreter, so nothing of the exporter is loaded alongside."""

    name = "local"

    def __init__(self, python: str | None = None):
        self.python = python or sys.executable

    def run(self, artifacts: list[Path], batch: Path, options: CheckOptions) -> dict:
        cmd = [self.python, *self.command_args([str(a) for a in artifacts], str(batch), options)]
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=options.timeout_s, check=False
            )
        except subprocess.TimeoutExpired:
            raise RunnerError(f"runtime_check timed out after {options.timeout_s:.0f} s") from None
        return self.parse(proc.stdout, proc.stderr, proc.returncode)
