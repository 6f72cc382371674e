"""README's commands and Python API, run as written and in order, in a fresh directory.

A new user copies these blocks first; each must work verbatim from a clone's root (where
``examples/`` is). The only commands not run are those README itself marks with a trailing
``# needs ...`` comment (network, the QEMU sysroot, a Raspberry Pi): the test says which and why.
Nothing in the commands is substituted: the digits they use ship with edgepack, so the real
epochs and recipes run (about two minutes here, hence ``slow``).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
# A command whose trailing comment starts so is skipped, with the rest of the comment as reason.
NEEDS = "needs "
COMMAND_TIMEOUT_S = 300


@dataclass(frozen=True)
class Command:
    argv: list[str]
    text: str  # as README writes it, continuation lines joined
    needs: str | None  # why it cannot run here, from README's own comment


def section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def fenced_blocks(text: str, lang: str = "") -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```$", text, flags=re.S | re.M)


def parse_commands(block: str) -> list[Command]:
    """One Command per shell command of a block; comment lines are prose."""
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        code, _, comment = line.partition("  #")
        comment = comment.strip()
        argv = shlex.split(code)
        needs = comment[len(NEEDS) :] if comment.startswith(NEEDS) else None
        commands.append(Command(argv, " ".join(argv), needs))
    return commands


def readme_commands() -> list[Command]:
    blocks = fenced_blocks(section(README.read_text(encoding="utf-8"), "Commands"))
    return [c for b in blocks for c in parse_commands(b)]


def test_commands_parse_and_are_all_edgepack():
    cmds = readme_commands()
    assert len(cmds) >= 12, [c.text for c in cmds]
    assert all(c.argv[0] == "edgepack" for c in cmds), [c.text for c in cmds]
    # The fragments README used to show ("edgepack run ... --qat-epochs 2") are not commands.
    assert not [c.text for c in cmds if "..." in c.argv or "…" in c.text]
    skipped = [c for c in cmds if c.needs]
    # Keep the list of commands nobody can test short: only what needs a device or the network.
    assert len(skipped) <= 4, [c.text for c in skipped]


def _edgepack(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    # What the `edgepack` console script runs, without relying on PATH.
    return subprocess.run(
        [sys.executable, "-c", "from exporter.cli import main; main()", *argv[1:]],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
    )


@pytest.mark.slow
def test_readme_commands_run_in_order(tmp_path):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    ran, skipped = [], []
    for cmd in readme_commands():
        if cmd.needs:
            skipped.append(f"{cmd.text}: needs {cmd.needs}")
            continue
        proc = _edgepack(cmd.argv, tmp_path)
        assert proc.returncode == 0, (
            f"README command failed (exit {proc.returncode}): {cmd.text}\n{proc.stderr[-3000:]}"
        )
        ran.append(cmd.text)
    print("skipped:", *skipped, sep="\n  ")
    # What the commands say they write is there.
    for path in (
        "small.pt",
        "small.pt.json",
        "dist/small/report.html",
        "dist/s80/report.json",
        "dist/app/report.json",
        "compare.html",
        "dist/small/package/android",
        "dist/small/small-android.zip",
    ):
        assert (tmp_path / path).exists(), path
    assert len(ran) >= 10


@pytest.mark.slow
def test_readme_python_api_runs(tmp_path):
    blocks = fenced_blocks(section(README.read_text(encoding="utf-8"), "Python API"), "python")
    assert len(blocks) == 1
    script = tmp_path / "api.py"
    script.write_text(
        blocks[0] + "\nprint('figures', figures['results'][0]['status'])\n", encoding="utf-8"
    )
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "seed.pt.json").is_file()
    assert (tmp_path / "dist/seed/report.json").is_file()
    # README prints (passed, [(path, accuracy)]) and runtime_check's result on one artifact.
    first = proc.stdout.splitlines()[0]
    assert first.startswith("True [('model.fp32.onnx', "), proc.stdout
    assert "figures ok" in proc.stdout, proc.stdout


def test_python_api_passes_mean_and_std(monkeypatch, tmp_path):
    import exporter
    import exporter.pipeline

    seen = {}
    monkeypatch.setattr(exporter.pipeline, "run", lambda opts: seen.setdefault("opts", opts))
    exporter.run("seed-cnn", tmp_path / "o", data="digits", mean=[0.5], std=(0.25,))
    assert seen["opts"].mean == (0.5,) and seen["opts"].std == (0.25,)
    seen.clear()
    exporter.run("seed-cnn", tmp_path / "o", data="digits")
    assert seen["opts"].mean is None and seen["opts"].std is None
