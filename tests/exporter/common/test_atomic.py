"""exporter.common.atomic: outputs appear whole or not at all, never over an input, never over a
directory that is not edgepack's, never over another process's result, one writer at a time."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from exporter.common.atomic import Marker, atomic_dir, atomic_path
from exporter.common.out_path import check_out_path
from exporter.common.output_lock import lock_path, output_lock
from exporter.errors import OutputExistsError, OutputPathError, OutputWriteError
from tests.helpers import ROOT

MARK = Marker(".edgepack-output", {"edgepack": "test", "command": "run"})


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def test_atomic_dir_writes_the_marker(tmp_path):
    with atomic_dir(tmp_path / "out", marker=MARK) as tmp:
        (tmp / "a.txt").write_text("a")
    assert json.loads((tmp_path / "out" / MARK.name).read_text()) == MARK.content
    assert (tmp_path / "out" / "a.txt").read_text() == "a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_force_replaces_a_marked_or_empty_directory(tmp_path):
    out = tmp_path / "out"
    for before in ({MARK.name: "{}", "old.txt": "old"}, {}):
        out.mkdir()
        for name, text in before.items():
            (out / name).write_text(text)
        with atomic_dir(out, force=True, marker=MARK) as tmp:
            (tmp / "new.txt").write_text("new")
        assert sorted(_tree(out)) == [MARK.name, "new.txt"]
        for p in out.iterdir():
            p.unlink()
        out.rmdir()


def test_force_refuses_a_directory_of_the_user(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    with (
        pytest.raises(OutputPathError, match="is not an edgepack output"),
        atomic_dir(out, force=True, marker=MARK),
    ):
        pytest.fail("refused before the body runs")
    assert _tree(tmp_path) == {"out/thesis.tex": "years of work"}


def test_marker_removed_during_the_run_is_refused_at_the_end(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / MARK.name).write_text("{}")
    with (
        pytest.raises(OutputPathError, match="is not an edgepack output"),
        atomic_dir(out, force=True, marker=MARK) as tmp,
    ):
        (tmp / "new.txt").write_text("new")
        (out / MARK.name).unlink()  # the user put their own files there meanwhile
        (out / "mine.txt").write_text("mine")
    assert _tree(tmp_path) == {"out/mine.txt": "mine"}


def test_dir_created_meanwhile_is_not_replaced_without_force(tmp_path):
    """Another writer finished first: its result stays, this one is discarded, nothing left."""
    out = tmp_path / "out"
    with (
        pytest.raises(OutputExistsError, match="created by someone else"),
        atomic_dir(out, marker=MARK) as tmp,
    ):
        (tmp / "mine.txt").write_text("second")
        out.mkdir()
        (out / "theirs.txt").write_text("first")
    assert _tree(tmp_path) == {"out/theirs.txt": "first"}


def test_file_created_meanwhile_is_not_replaced_without_force(tmp_path):
    out = tmp_path / "w.pt"
    with (
        pytest.raises(OutputExistsError, match="created by someone else"),
        atomic_path(out, force=False) as tmp,
    ):
        tmp.write_text("second")
        out.write_text("first")
    assert _tree(tmp_path) == {"w.pt": "first"}


@pytest.mark.parametrize(
    ("out", "fragment"),
    [
        ("data", "is the --data input itself"),
        ("data/run", "is inside the --data directory"),
        ("data/sub/run", "is inside the --data directory"),
        (".", "is the current directory"),
        ("..", "is above the current directory"),
        ("models", "contains the --weights input"),
        ("linked", "is the --data input itself"),  # a symlink to the data
    ],
)
def test_out_overlapping_an_input_is_refused(out, fragment, tmp_path, monkeypatch):
    (tmp_path / "data" / "sub").mkdir(parents=True)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "w.pt").write_bytes(b"w")
    (tmp_path / "linked").symlink_to(tmp_path / "data")
    monkeypatch.chdir(tmp_path / "data" / "sub" if out in (".", "..") else tmp_path)
    inputs = [("--data", tmp_path / "data"), ("--weights", tmp_path / "models" / "w.pt")]
    with pytest.raises(OutputPathError, match=fragment):
        check_out_path(out, inputs)


@pytest.mark.parametrize("out", ["dist/run", "models-out", "models/../dist"])
def test_out_beside_the_inputs_is_fine(out, tmp_path, monkeypatch):
    # An output next to a file input (or in the folder of the weights file) overlaps nothing.
    (tmp_path / "data").mkdir()
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "w.pt").write_bytes(b"w")
    monkeypatch.chdir(tmp_path)
    check_out_path(out, [("--data", "data"), ("--weights", "models/w.pt")])
    check_out_path("models/run2", [("--weights", "models/w.pt")])


HOLD = textwrap.dedent("""
    import sys, time
    from exporter.common.output_lock import output_lock
    with output_lock(sys.argv[1]):
        print("locked", flush=True)
        sys.stdin.readline()
""")


def test_output_lock_refuses_a_second_writer(tmp_path):
    out = tmp_path / "a" / "b" / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputPathError) as err, output_lock(out):
            pytest.fail("a second writer got the lock")
        assert str(err.value) == (
            f"{out} is being written by another edgepack process (pid {holder.pid})"
        )
        holder.communicate("\n", timeout=30)
    finally:
        holder.kill()
    # Released: the lock file and the parents created for it are gone, the lock is free again.
    assert list(tmp_path.iterdir()) == []
    with output_lock(out):
        assert lock_path(out).is_file()
    assert list(tmp_path.iterdir()) == []


def test_lock_on_a_read_only_filesystem_is_one_line(tmp_path):
    mnt = tmp_path / "ro"
    mnt.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,ro", "tmpfs", str(mnt)], capture_output=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        with (
            pytest.raises(OutputWriteError, match="read-only file system"),
            output_lock(mnt / "out"),
        ):
            pytest.fail("locked on a read-only filesystem")
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
