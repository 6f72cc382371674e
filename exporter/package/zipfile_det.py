"""Deterministic zip archives: the same files give the same bytes, on any machine, any day.

Zip headers carry a timestamp, permissions and the entry order; all three are fixed here so a
package can be checked by its sha256 and diffed between releases.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping
from pathlib import PurePosixPath

from exporter.errors import PackageError

# The earliest time a zip header can hold (MS-DOS epoch); anything else leaks the build time.
FIXED_TIME = (1980, 1, 1, 0, 0, 0)
FILE_MODE = 0o644


def check_entry_name(name: str) -> None:
    """Refuse names that could escape the extraction folder or differ between platforms."""
    path = PurePosixPath(name)
    if (
        not name
        or name.startswith("/")
        or "\\" in name
        or ":" in name
        or any(part in ("", ".", "..") for part in name.split("/"))
        or path.is_absolute()
    ):
        raise PackageError(f"unsafe zip entry name {name!r}")


def _info(name: str, compress: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
    info.compress_type = compress
    info.external_attr = (0o100000 | FILE_MODE) << 16  # a regular file, rw-r--r--
    info.create_system = 3  # Unix, so that the permission bits above are honoured
    return info


def write_entries(zf: zipfile.ZipFile, files: Mapping[str, bytes], compress: int) -> None:
    for name in sorted(files):
        check_entry_name(name)
        zf.writestr(
            _info(name, compress),
            files[name],
            compress_type=compress,
            compresslevel=9 if compress else None,
        )


def zip_bytes(files: Mapping[str, bytes], compress: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip of ``files`` (name -> content) with sorted entries and fixed metadata."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        write_entries(zf, files, compress)
    return buf.getvalue()


def append_zip(head: bytes, files: Mapping[str, bytes]) -> bytes:
    """``head`` followed by a stored (uncompressed) zip of ``files``.

    Opening the buffer in append mode makes zipfile write offsets counted from the start of
    the whole buffer, which is what readers of "a file with a zip at its end" expect (the TFLite
    metadata extractor reads associated files this way, and only uncompressed ones).
    """
    buf = io.BytesIO(head)
    buf.seek(0, io.SEEK_END)
    with zipfile.ZipFile(buf, "a") as zf:
        write_entries(zf, files, zipfile.ZIP_STORED)
    return buf.getvalue()


def read_zip(data: bytes | str) -> dict[str, bytes]:
    """Every entry of a zip (file path or bytes), after checking its names are safe."""
    src = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        with zipfile.ZipFile(src) as zf:
            out: dict[str, bytes] = {}
            for info in zf.infolist():
                check_entry_name(info.filename)
                if info.is_dir():
                    raise PackageError(f"unexpected directory entry {info.filename!r}")
                if info.filename in out:
                    raise PackageError(f"duplicate zip entry {info.filename!r}")
                out[info.filename] = zf.read(info)
            return out
    except (zipfile.BadZipFile, OSError) as exc:
        raise PackageError(
            f"{data if isinstance(data, str) else 'archive'}: not a readable zip ({exc})"
        ) from None
