"""Atomic output: write to a temporary sibling, then rename over the target.

A crash, Ctrl-C or a full disk never leaves a half-written artifact under the final name.
Beside that, what keeps the user's files safe from an output: :func:`check_out_path` (an output
never overlaps an input or the working directory), :func:`output_lock` (one writer per output)
and the marker an output directory carries, so ``--force`` replaces only edgepack's own.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
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
_SETUP_ERRNOS = _WRITE_ERRNOS | {errno.EACCES, errno.EPERM}


def _write_error(
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


def _resolved(path: str | os.PathLike) -> Path:
    return Path(path).expanduser().resolve()


def check_out_path(out: str | os.PathLike, inputs: Iterable[tuple[str, str | os.PathLike]]) -> None:
    """Refuse an output that would destroy or pollute an input, or the working directory.

    ``inputs`` are ``(option, path)`` pairs. The output may not be an input, contain one (its
    replacement would delete it), or lie inside an input directory (it would become part of the
    data), nor be the current directory or one above it. Symlinks are resolved first.
    """
    target = _resolved(out)
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        where = "the current directory" if target == cwd else "above the current directory"
        raise OutputPathError(
            f"--out {out} is {where}: replacing it would delete your working directory; "
            "choose a new directory for the output"
        )
    for option, path in inputs:
        src = _resolved(path)
        if src == target:
            raise OutputPathError(
                f"--out {out} is the {option} input itself: edgepack never writes over its inputs"
            )
        if target in src.parents:
            raise OutputPathError(
                f"--out {out} contains the {option} input {path}: replacing the output would "
                "delete it; choose another --out"
            )
        if src.is_dir() and src in target.parents:
            raise OutputPathError(
                f"--out {out} is inside the {option} directory {path}: the output would become "
                "part of that input; choose another --out"
            )


# ----- one writer per output ----------------------------------------------------------------


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of an output: ``.<name>.lock`` beside it."""
    final = Path(os.path.abspath(path))
    return final.with_name(f".{final.name}.lock")


def _make_parents(directory: Path) -> list[Path]:
    """``mkdir -p directory``; returns the directories it created, deepest last."""
    missing = [p for p in [directory, *directory.parents] if not p.exists()]
    directory.mkdir(parents=True, exist_ok=True)
    return list(reversed(missing))


def _remove_empty(created: list[Path]) -> None:
    for d in reversed(created):
        with contextlib.suppress(OSError):
            d.rmdir()


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError):
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if text.isdigit():
            return text
    return "unknown"


def _acquire(lock: Path, final: Path) -> int:
    """An open, exclusively locked descriptor of ``lock``, which holds this process's pid."""
    for _ in range(20):
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder(fd)
            os.close(fd)
            raise OutputPathError(
                f"{final} is being written by another edgepack process (pid {pid})"
            ) from None
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                os.close(fd)
                raise
            return fd  # a filesystem without locks: the final no-replace rename still holds
        # The holder removes the file as it releases it: a lock on that removed file is none.
        if _same_file(fd, lock):
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)
    raise OutputPathError(f"{final} is being written by other edgepack processes")


@contextlib.contextmanager
def output_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on the output ``path`` (a ``.<name>.lock`` file beside it).

    A second edgepack process writing the same output fails at once, naming the first one's
    pid, instead of both running and the later one replacing the earlier one's result. The lock
    file, and parent directories created for it, are removed again on exit.
    """
    final = Path(os.path.abspath(path))
    lock = lock_path(final)
    try:
        created = _make_parents(lock.parent)
        fd = _acquire(lock, final)
    except OSError as exc:
        if err := _write_error(exc, final, _SETUP_ERRNOS):
            raise err from None
        raise
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)  # while still locked: see _acquire
        os.close(fd)
        _remove_empty(created)


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
        if err := _write_error(exc, final, _SETUP_ERRNOS):
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
        if err := _write_error(exc, final):
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
        if err := _write_error(exc, final, _SETUP_ERRNOS):
            raise err from None
        raise
    _plain_mode(tmp, directory=True)
    try:
        yield tmp
        _install_dir(tmp, final, force, marker)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if err := _write_error(exc, final):
            raise err from None
        raise
