"""`edgepack target setup --force` replaces a working sysroot only with one that passed.

The slow steps (apt, pip, the compiler, QEMU) are replaced by stand-ins that write a few files,
so this runs anywhere; the real build is exercised by test_remote_targets.py where QEMU is.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from exporter.common.progress import make_progress
from exporter.errors import RuntimeCheckError
from exporter.targets import sysroot as sysroot_mod


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def fake_steps(monkeypatch, tmp_path):
    """A cache holding a previous sysroot, and build steps that touch no network or tool."""
    monkeypatch.setenv("EDGEPACK_CACHE", str(tmp_path / "cache"))
    sr = sysroot_mod.sysroot_for("arm64")
    (sr.sysroot / "usr" / "bin").mkdir(parents=True)
    (sr.sysroot / "usr" / "bin" / "marker").write_text("previous build")
    sr.stamp.write_text(json.dumps({"format": sysroot_mod.STAMP_FORMAT, "python": "3.11.old"}))

    real_which = shutil.which
    monkeypatch.setattr(sysroot_mod, "find_qemu", lambda: ("/fake/qemu-aarch64", "9.9"))
    monkeypatch.setattr(
        sysroot_mod.shutil,
        "which",
        lambda name, *a, **k: f"/fake/{name}" if name in ("apt-get", "dpkg") else real_which(name),
    )
    monkeypatch.setattr(sysroot_mod, "_apt_config", lambda work: {})
    monkeypatch.setattr(sysroot_mod, "_download_debs", lambda work, env, progress: [])
    monkeypatch.setattr(sysroot_mod, "_download_wheels", lambda work, pins, progress: [])
    monkeypatch.setattr(sysroot_mod, "_compile_bytecode", lambda root, progress: None)
    monkeypatch.setattr(
        sysroot_mod, "_compile_plugin", lambda dest, progress: dest.write_bytes(b"new plugin")
    )
    return sr


def _build():
    with make_progress(quiet=True) as progress:
        return sysroot_mod.build("arm64", force=True, progress=progress)


@pytest.mark.parametrize(
    "step,exc",
    [
        ("_smoke_test", RuntimeCheckError("the sysroot smoke test failed: ImportError")),
        ("_smoke_test", KeyboardInterrupt()),
        ("_download_wheels", RuntimeCheckError("pip download of aarch64 wheels failed: 404")),
    ],
)
def test_failed_build_leaves_the_previous_sysroot(fake_steps, monkeypatch, step, exc):
    sr = fake_steps
    before = _tree(sr.root)

    def fail(*_args, **_kwargs):
        raise exc

    monkeypatch.setattr(sysroot_mod, step, fail)
    with pytest.raises(type(exc)):
        _build()
    assert _tree(sr.root) == before
    assert sorted(p.name for p in sr.root.parent.iterdir()) == ["arm64"], "a temp dir was left"


def test_successful_build_replaces_the_previous_sysroot(fake_steps, monkeypatch):
    sr = fake_steps
    monkeypatch.setattr(sysroot_mod, "_smoke_test", lambda sr, qemu: "3.11.2")
    assert _build() == sr
    assert not (sr.sysroot / "usr" / "bin" / "marker").exists()
    assert sr.plugin.read_bytes() == b"new plugin"
    stamp = json.loads(sr.stamp.read_text())
    assert stamp["python"] == "3.11.2" and stamp["qemu"] == "9.9"
    assert sorted(p.name for p in sr.root.parent.iterdir()) == ["arm64"], "a temp dir was left"


def test_failed_first_build_leaves_nothing(fake_steps, monkeypatch):
    sr = fake_steps
    shutil.rmtree(sr.root)

    def fail(*_args, **_kwargs):
        raise RuntimeCheckError("the sysroot smoke test failed: ImportError")

    monkeypatch.setattr(sysroot_mod, "_smoke_test", fail)
    with pytest.raises(RuntimeCheckError):
        _build()
    assert list(sr.root.parent.iterdir()) == []
    assert sysroot_mod.problems(sr) == ["not built"]
