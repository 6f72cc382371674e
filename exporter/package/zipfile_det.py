"""Deterministic zip archives: the same files give the same bytes, on any machine, any day.

Zip headers carry a timestamp, permissions and the entry order; all three are fixed here so a
package can be checked by its sha256 and diffed between releases.
"""

from __future__ import annotations

import io
import os
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
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


@dataclass(frozen=True)
class ZipLimits:
    """What a zip may declare in its central directory before any entry is inflated."""

    entries: int = 64  # a package holds 7 files, an .npz 3 arrays
    entry_bytes: int = 2 << 30  # TFLite and ORT flatbuffers cannot exceed 2 GiB
    total_bytes: int = 4 << 30
    # Deflate reaches ~1000:1 on constant data; models and photos compress less than 10:1,
    # and a 99 % pruned model stored densely well under 100:1. Small files may compress more.
    ratio: float = 200.0
    ratio_from: int = 1 << 20


def check_entries(zf: zipfile.ZipFile, archive_bytes: int, limits: ZipLimits) -> list:
    """The entries of ``zf`` (ZipInfo), refused from their central-directory sizes alone when
    they could not be a package's (too many, too large, inflating too far, or more compressed
    bytes than the archive holds), or when a name is unsafe, a directory or a duplicate."""
    infos = zf.infolist()
    if len(infos) > limits.entries:
        raise PackageError(f"{len(infos)} entries (at most {limits.entries})")
    seen: set[str] = set()
    for info in infos:
        check_entry_name(info.filename)
        if info.is_dir():
            raise PackageError(f"unexpected directory entry {info.filename!r}")
        if info.filename in seen:
            raise PackageError(f"duplicate zip entry {info.filename!r}")
        seen.add(info.filename)
        _check_size(info, limits)
    total = sum(i.file_size for i in infos)
    if total > limits.total_bytes:
        raise PackageError(f"entries declare {total} bytes in all (at most {limits.total_bytes})")
    if sum(i.compress_size for i in infos) > archive_bytes:
        raise PackageError("entries declare more compressed bytes than the archive holds")
    return infos


def _check_size(info: zipfile.ZipInfo, limits: ZipLimits) -> None:
    name, size = info.filename, info.file_size
    if size > limits.entry_bytes:
        raise PackageError(f"entry {name} declares {size} bytes (at most {limits.entry_bytes})")
    ratio = size / max(info.compress_size, 1)
    if size > limits.ratio_from and ratio > limits.ratio:
        raise PackageError(
            f"entry {name} declares {size} bytes from {info.compress_size} compressed "
            f"(ratio {ratio:.0f}, at most {limits.ratio:.0f}): a zip bomb?"
        )


def read_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """One entry, read in chunks and never past the size its central directory declares."""
    chunks, left = [], info.file_size
    with zf.open(info) as fh:
        while left > 0:
            chunk = fh.read(min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        if left or fh.read(1):
            raise PackageError(f"entry {info.filename} does not hold the size it declares")
    return b"".join(chunks)


def read_zip(data: bytes | str, limits: ZipLimits = ZipLimits()) -> dict[str, bytes]:
    """Every entry of a zip (file path or bytes), after checking its names and declared sizes."""
    src = io.BytesIO(data) if isinstance(data, bytes) else data
    size = len(data) if isinstance(data, bytes) else os.path.getsize(data)
    try:
        with zipfile.ZipFile(src) as zf:
            return {i.filename: read_entry(zf, i) for i in check_entries(zf, size, limits)}
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
        raise PackageError(
            f"{data if isinstance(data, str) else 'archive'}: not a readable zip ({exc})"
        ) from None
