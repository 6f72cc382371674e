"""Atomic output: write to a temporary sibling, then rename over the target.

A crash, Ctrl-C or a full disk never leaves a half-written artifact under the final name.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from exporter.errors import OutputExistsError, OutputWriteError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _plain_mode(path: Path, directory: bool) -> None:
    """mkstemp/mkdtemp create private (0600/0700) entries; outputs get the usual modes."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


# A full disk or quota is the user's environment, not a bug: one line, like any bad input.
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def _no_space(exc: BaseException, final: Path) -> OutputWriteError | None:
    """The one-line error for ``exc`` if it means the disk is full, naming the final output.

    An inner atomic write (a file inside an atomic directory) has already turned ENOSPC into
    OutputWriteError naming its temp path; the outermost output is what the user asked for.
    """
    if isinstance(exc, OutputWriteError) or (isinstance(exc, OSError) and exc.errno in _NO_SPACE):
        return OutputWriteError(
            f"cannot write {final}: no space left on device (nothing was written)"
        )
    return None


def check_writable(path: Path, force: bool) -> None:
    """Refuse to replace an existing output unless ``force`` is set."""
    if path.exists() and not force:
        raise OutputExistsError(f"{path} already exists (use --force to overwrite it)")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, force: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``.

    The caller writes the temp file however it likes (``onnx.save``, ``np.savez``, ...).
    On any exception the temp file is removed and ``path`` is left untouched.
    """
    final = Path(path)
    check_writable(final, force)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    except OSError as exc:
        if err := _no_space(exc, final):
            raise err from None
        raise
    os.close(fd)
    tmp = Path(tmp_name)
    _plain_mode(tmp, directory=False)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if err := _no_space(exc, final):
            raise err from None
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, force: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    with atomic_path(path, force=force) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, force: bool = True) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), force=force)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Build a whole output directory in a temp sibling and move it into place at the end.

    With ``force`` an existing directory is replaced only once the new one is complete.
    """
    final = Path(path)
    check_writable(final, force)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    except OSError as exc:
        if err := _no_space(exc, final):
            raise err from None
        raise
    _plain_mode(tmp, directory=True)
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if err := _no_space(exc, final):
            raise err from None
        raise
