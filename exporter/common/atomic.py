"""Atomic output: write to a temporary sibling, then rename over the target.

A crash, Ctrl-C or a full disk never leaves a half-written artifact under the final name, a
rename never replaces what appeared meanwhile, and ``--force`` replaces only a directory that
carries edgepack's marker. The rest of what keeps the user's files safe from an output lives
beside this module: ``out_path.py`` (an output never overlaps an input or the working
directory) and ``output_lock.py`` (one writer per output).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from exporter.errors import OutputExistsError, OutputPathError, OutputWriteError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _plain_mode(path: Path, directory: bool) -> None:
    """mkstemp/mkdtemp create private (0600/0700) entries; outputs get the usual modes."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


# A full disk, a quota or a read-only mount is the user's environment, not a bug: one line, like
# any bad input. Permission errors count too while setting up (before any input is read), where
# they can only be about the output.
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
_WRITE_ERRNOS = _NO_SPACE | {errno.EROFS}
SETUP_ERRNOS = _WRITE_ERRNOS | {errno.EACCES, errno.EPERM}


def write_error(
    exc: BaseException, final: Path, errnos: frozenset[int] = _WRITE_ERRNOS
) -> OutputWriteError | None:
    """The one-line error for ``exc`` if the disk refused the write, naming the final output.

    An inner atomic write (a file inside an atomic directory) has already turned the OSError into
    OutputWriteError naming its temp path; the outermost output is what the user asked for.
    """
    if isinstance(exc, OutputWriteError):
        reason = getattr(exc, "reason", None)
        if reason is None:
            return None
    elif isinstance(exc, OSError) and exc.errno in errnos:
        reason = os.strerror(exc.errno).lower()
    else:
        return None
    err = OutputWriteError(f"cannot write {final}: {reason} (nothing was written)")
    err.reason = reason
    return err


def check_writable(path: Path, force: bool) -> None:
    """Refuse to replace an existing output unless ``force`` is set."""
    if path.exists() and not force:
        raise OutputExistsError(f"{path} already exists (use --force to overwrite it)")


@dataclass(frozen=True)
class Marker:
    """The file each output directory gets (``name``, JSON ``content``): proof that edgepack
    wrote it, so ``--force`` never replaces a directory of the user's."""

    name: str
    content: dict = field(default_factory=dict)


def check_replaceable(path: Path, force: bool, marker: str | None) -> None:
    """Refuse an existing output without ``force``, and with it a directory that is neither
    empty nor marked with ``marker`` (``None``: any directory may be replaced)."""
    check_writable(path, force)
    if marker is None or not path.exists():
        return
    if not path.is_dir():
        raise OutputPathError(f"{path} is a file, not an output directory: refusing to replace it")
    if not (path / marker).is_file() and any(path.iterdir()):
        raise OutputPathError(
            f"{path} is not an edgepack output (it has no {marker}): --force replaces only "
            "directories edgepack wrote; write elsewhere or remove it yourself"
        )


# ----- renames that never replace -----------------------------------------------------------

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def _renameat2():
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_RENAMEAT2 = _renameat2()


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``, raising FileExistsError rather than replacing ``dst``.

    Linux's renameat2(RENAME_NOREPLACE) makes the check and the rename one step; elsewhere (or
    on a filesystem without it) the check runs just before the rename.
    """
    if _RENAMEAT2 is not None:
        rc = _RENAMEAT2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE)
        if rc == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), str(dst))
    if dst.exists() or dst.is_symlink():
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    os.rename(src, dst)


def _install(tmp: Path, final: Path, force: bool) -> None:
    """Move a finished temp file into place; without ``force`` an output that appeared meanwhile
    (another process) is an error, never silently replaced."""
    if force:
        os.replace(tmp, final)
        return
    try:
        rename_noreplace(tmp, final)
    except FileExistsError:
        raise OutputExistsError(
            f"{final} was created by someone else while this output was written; it was kept "
            "and this result discarded (use --force to overwrite it)"
        ) from None


# ----- atomic files and directories ---------------------------------------------------------


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
        if err := write_error(exc, final, SETUP_ERRNOS):
            raise err from None
        raise
    os.close(fd)
    tmp = Path(tmp_name)
    _plain_mode(tmp, directory=False)
    try:
        yield tmp
        _install(tmp, final, force)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if err := write_error(exc, final):
            raise err from None
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, force: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    with atomic_path(path, force=force) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, force: bool = True) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), force=force)


def _install_dir(tmp: Path, final: Path, force: bool, marker: Marker | None) -> None:
    if marker is not None:
        (tmp / marker.name).write_text(json.dumps(marker.content, sort_keys=True) + "\n")
    if not (force and final.exists()):
        _install(tmp, final, force=False)
        return
    # Checked again at the end: the directory may have changed during a long run.
    check_replaceable(final, force, marker.name if marker else None)
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(
    path: str | os.PathLike, force: bool = False, *, marker: Marker | None = None
) -> Iterator[Path]:
    """Build a whole output directory in a temp sibling and move it into place at the end.

    With ``force`` an existing directory is replaced only once the new one is complete, and,
    given a ``marker``, only if it is empty or carries that marker; the new one gets it.
    """
    final = Path(path)
    check_replaceable(final, force, marker.name if marker else None)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    except OSError as exc:
        if err := write_error(exc, final, SETUP_ERRNOS):
            raise err from None
        raise
    _plain_mode(tmp, directory=True)
    try:
        yield tmp
        _install_dir(tmp, final, force, marker)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if err := write_error(exc, final):
            raise err from None
        raise
