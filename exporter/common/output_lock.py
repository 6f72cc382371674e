"""One writer per output: an exclusive lock on a ``.<name>.lock`` file beside the output."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from exporter.common.atomic import SETUP_ERRNOS, write_error
from exporter.errors import OutputPathError


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
        if err := write_error(exc, final, SETUP_ERRNOS):
            raise err from None
        raise
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)  # while still locked: see _acquire
        os.close(fd)
        _remove_empty(created)
