"""The ARM64 sysroot that QEMU targets run in, built once into the cache.

``edgepack target setup arm64`` makes ``$EDGEPACK_CACHE/arm64`` (default ``~/.cache/edgepack``):

- ``sysroot/``: Debian bookworm's arm64 python3.11 and the shared libraries it needs, fetched
  with a private apt configuration (its own lists, status and cache; the host's dpkg database is
  never read or written, nothing runs as the guest) and unpacked with ``dpkg -x``; plus the
  aarch64 wheels of numpy, onnxruntime and ai-edge-litert, pinned to the versions installed on
  this machine so emulated and native figures compare, unpacked into ``opt/edgepack``.
- ``insn_count.so``: the QEMU plugin that counts guest instructions (``exporter/targets/qemu``).
- ``stamp.json``: what was built; a missing or inconsistent stamp means "run setup --force".

The Debian mirror is the one this machine's apt already uses (read from
/etc/apt/sources.list(.d) at run time), or ``$EDGEPACK_DEBIAN_MIRROR``.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from exporter.common.progress import Progress
from exporter.errors import RuntimeCheckError
from runtime_check.qemu import GUEST_PYTHON, GUEST_SITE

STAMP_FORMAT = 1
ARCHES = ("arm64",)
SUITE = "bookworm"  # python3.11, the version the cp311 wheels below are fetched for
PYTHON_VERSION = "3.11"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
PLUGIN_SOURCE = Path(__file__).resolve().parent / "qemu" / "insn_count.c"

# python3.11 and every shared library it and the wheels load (glibc, libstdc++ for the
# runtimes, ssl/ffi/sqlite... for the stdlib); apt-get download does not resolve dependencies.
DEBS = (
    "python3.11-minimal",
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
    "libc6",
    "libstdc++6",
    "libgcc-s1",
    "zlib1g",
    "libexpat1",
    "libffi8",
    "libssl3",
    "libbz2-1.0",
    "liblzma5",
    "libsqlite3-0",
    "libuuid1",
    "libncursesw6",
    "libtinfo6",
    "libreadline8",
    "readline-common",
    "libdb5.3",
    "libgdbm6",
    "libgdbm-compat4",
    "libnsl2",
    "libtirpc3",
    "libcrypt1",
    "media-types",
    "libgssapi-krb5-2",
    "libkrb5-3",
    "libk5crypto3",
    "libkrb5support0",
    "libcom-err2",
    "libkeyutils1",
    "libzstd1",
)

# Distribution name -> import name; versions pinned to this machine's where installed.
WHEELS = {"numpy": "numpy", "onnxruntime": "onnxruntime", "ai-edge-litert": "ai_edge_litert"}
WHEEL_PLATFORMS = (
    "manylinux2014_aarch64",
    "manylinux_2_17_aarch64",
    "manylinux_2_27_aarch64",
    "manylinux_2_28_aarch64",
)


def cache_root() -> Path:
    return Path(os.environ.get("EDGEPACK_CACHE") or Path.home() / ".cache" / "edgepack")


@dataclass(frozen=True)
class Sysroot:
    """Paths of one built architecture in the cache."""

    arch: str
    root: Path

    @property
    def sysroot(self) -> Path:
        return self.root / "sysroot"

    @property
    def views(self) -> Path:
        return self.root / "views"

    @property
    def plugin(self) -> Path:
        return self.root / "insn_count.so"

    @property
    def stamp(self) -> Path:
        return self.root / "stamp.json"

    @property
    def python(self) -> Path:
        return self.sysroot / GUEST_PYTHON.lstrip("/")

    @property
    def site(self) -> Path:
        return self.sysroot / GUEST_SITE.lstrip("/")


def sysroot_for(arch: str = "arm64") -> Sysroot:
    if arch not in ARCHES:
        raise RuntimeCheckError(
            f"unknown target architecture '{arch}' (known: {', '.join(ARCHES)})"
        )
    return Sysroot(arch, cache_root() / arch)


def find_qemu() -> tuple[str, str]:
    """(path, version) of qemu-aarch64, or a one-line error saying what to install."""
    exe = shutil.which("qemu-aarch64")
    if exe is None:
        raise RuntimeCheckError(
            "qemu-aarch64 not found: install it with `apt-get install qemu-user`"
        )
    try:
        out = subprocess.run(
            [exe, "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    m = re.search(r"version (\S+)", out)
    return exe, m.group(1) if m else "unknown"


def host_versions() -> dict[str, str | None]:
    """Versions of the runtimes installed here, so the sysroot gets the same ones."""
    found: dict[str, str | None] = {}
    for dist in WHEELS:
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = None
    return found


def read_stamp(sr: Sysroot) -> dict | None:
    try:
        return json.loads(sr.stamp.read_text())
    except (OSError, ValueError):
        return None


def problems(sr: Sysroot) -> list[str]:
    """Why the cached sysroot cannot be used (empty when it can)."""
    if not sr.root.exists():
        return ["not built"]
    stamp = read_stamp(sr)
    if stamp is None:
        return [f"{sr.stamp} is missing or unreadable"]
    found = []
    if stamp.get("format") != STAMP_FORMAT:
        found.append(f"built by another edgepack version (format {stamp.get('format')})")
    if not sr.python.is_file():
        found.append(f"{sr.python} is missing")
    if not sr.plugin.is_file():
        found.append(f"{sr.plugin} is missing")
    for dist, module in WHEELS.items():
        if not (sr.site / module).is_dir():
            found.append(f"{dist} is missing from {sr.site}")
    built = stamp.get("wheels", {})
    for dist, version in host_versions().items():
        if version and built.get(dist) not in (None, version):
            found.append(f"it has {dist} {built.get(dist)} but this machine has {version}")
    return found


def require(arch: str = "arm64") -> Sysroot:
    """The usable sysroot, or one line saying how to (re)build it."""
    sr = sysroot_for(arch)
    issues = problems(sr)
    if issues == ["not built"]:
        raise RuntimeCheckError(
            f"the {arch} sysroot is not built ({sr.root}): run "
            f"`edgepack target setup {arch}` once (a ~260 MB download, about 10 s)"
        )
    if issues:
        raise RuntimeCheckError(
            f"the {arch} sysroot in {sr.root} is unusable ({issues[0]}): "
            f"run `edgepack target setup {arch} --force`"
        )
    return sr


# ---------------------------------------------------------------------------------- building


def _apt_sources() -> list[tuple[str, str, str | None]]:
    """(uri, suite, signed_by) of the host's enabled `deb` sources, one-line and deb822 alike."""
    etc = Path("/etc/apt")
    files = [etc / "sources.list"] if (etc / "sources.list").is_file() else []
    parts = etc / "sources.list.d"
    if parts.is_dir():
        files += sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources"))
    entries: list[tuple[str, str, str | None]] = []
    for path in files:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        entries += _deb822_sources(text) if path.suffix == ".sources" else _one_line_sources(text)
    return entries


def _deb822_sources(text: str) -> list[tuple[str, str, str | None]]:
    entries = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        for uri in fields.get("uris", "").split():
            entries += [
                (uri, suite, fields.get("signed-by")) for suite in fields.get("suites", "").split()
            ]
    return entries


def _one_line_sources(text: str) -> list[tuple[str, str, str | None]]:
    entries = []
    for line in text.splitlines():
        m = re.match(r"\s*deb\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)", line)
        if m:
            signed = re.search(r"signed-by=(\S+)", m.group(1) or "")
            entries.append((m.group(2), m.group(3), signed.group(1) if signed else None))
    return entries


def debian_mirrors() -> tuple[str, str | None, str | None]:
    """(main archive URI, security archive URI or None, keyring or None) to fetch arm64 from."""
    override = os.environ.get("EDGEPACK_DEBIAN_MIRROR")
    sources = _apt_sources()
    main = next(
        (
            (u, k)
            for u, s, k in sources
            if not s.endswith("-security") and u.rstrip("/").endswith("/debian")
        ),
        None,
    )
    security = next(((u, k) for u, s, k in sources if s.endswith("-security")), None)
    if override:
        main = (override, main[1] if main else None)
    if main is None:
        raise RuntimeCheckError(
            "no Debian mirror found in /etc/apt/sources.list(.d); set "
            "EDGEPACK_DEBIAN_MIRROR to a Debian archive URL"
        )
    keyring = main[1] or (KEYRING if Path(KEYRING).is_file() else None)
    return main[0], security[0] if security else None, keyring


def _apt_config(work: Path) -> dict[str, str]:
    """A private apt configuration for arm64; returns the environment that selects it."""
    main, security, keyring = debian_mirrors()
    opts = f"arch=arm64 signed-by={keyring}" if keyring else "arch=arm64"
    lines = [f"deb [{opts}] {main} {SUITE} main", f"deb [{opts}] {main} {SUITE}-updates main"]
    if security:
        lines.append(f"deb [{opts}] {security} {SUITE}-security main")
    for sub in ("lists/partial", "cache/archives/partial", "sources.list.d", "preferences.d"):
        (work / "apt" / sub).mkdir(parents=True, exist_ok=True)
    apt = work / "apt"
    (apt / "sources.list").write_text("\n".join(lines) + "\n")
    (apt / "status").write_text("")
    conf = {
        "APT::Architecture": "arm64",
        "Dir::State": apt,
        "Dir::State::lists": apt / "lists",
        "Dir::State::status": apt / "status",
        "Dir::Cache": apt / "cache",
        "Dir::Etc::SourceList": apt / "sources.list",
        "Dir::Etc::SourceParts": apt / "sources.list.d",
        "Dir::Etc::Preferences": apt / "preferences",
        "Dir::Etc::PreferencesParts": apt / "preferences.d",
        # As root apt would drop to _apt, which cannot write into a user's cache directory.
        "APT::Sandbox::User": "root",
        "Acquire::Languages": "none",
    }
    text = "".join(f'{k} "{v}";\n' for k, v in conf.items())
    text += 'APT::Architectures { "arm64"; };\n'
    (apt / "apt.conf").write_text(text)
    return {**os.environ, "APT_CONFIG": str(apt / "apt.conf"), "LC_ALL": "C"}


def _run(cmd: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)
    except FileNotFoundError:
        raise RuntimeCheckError(f"{what}: {cmd[0]} not found") from None
    if proc.returncode != 0:
        lines = [
            ln
            for ln in (proc.stderr + proc.stdout).splitlines()
            if ln.strip() and not ln.startswith("W:")
        ]
        raise RuntimeCheckError(f"{what} failed: {lines[-1] if lines else proc.returncode}")
    return proc


def _download_debs(work: Path, env: dict, progress: Progress) -> list[Path]:
    task = progress.add_task("apt-get update (arm64, private lists)", total=1)
    _run(["apt-get", "update", "-q"], "apt-get update for arm64", env=env, timeout=600)
    progress.update(task, advance=1)
    debs = work / "debs"
    debs.mkdir()
    task = progress.add_task(f"download {len(DEBS)} arm64 .deb", total=len(DEBS))
    # One apt-get call (each has ~0.3 s of start-up); its "Get:" lines advance the bar.
    proc = subprocess.Popen(
        ["apt-get", "download", "-q", *DEBS],
        cwd=debs,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("Get:"):
            progress.update(task, advance=1)
    err = proc.stderr.read() if proc.stderr else ""
    if proc.wait() != 0:
        tail = [ln for ln in err.splitlines() if ln.startswith("E:")] or err.splitlines() or ["?"]
        raise RuntimeCheckError(f"apt-get download of arm64 packages failed: {tail[-1]}")
    progress.update(task, completed=len(DEBS))
    return sorted(debs.glob("*.deb"))


def _download_wheels(work: Path, pins: dict[str, str | None], progress: Progress) -> list[Path]:
    task = progress.add_task("pip download aarch64 wheels (cp311)", total=1)
    wheels = work / "wheels"
    reqs = [f"{d}=={v}" if v else d for d, v in pins.items()]
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "-q",
        "--disable-pip-version-check",
        "--only-binary=:all:",
        "--python-version",
        PYTHON_VERSION,
        "--implementation",
        "cp",
        "-d",
        str(wheels),
    ]
    for plat in WHEEL_PLATFORMS:
        cmd += ["--platform", plat]
    _run([*cmd, *reqs], "pip download of aarch64 wheels", timeout=900)
    progress.update(task, advance=1)
    return sorted(wheels.glob("*.whl"))


def _compile_plugin(dest: Path, progress: Progress) -> None:
    task = progress.add_task("build insn_count QEMU plugin", total=1)
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise RuntimeCheckError(
            "no C compiler to build the instruction-count plugin: `apt-get install gcc`"
        )
    _run(
        [cc, "-shared", "-fPIC", "-O2", "-fvisibility=hidden", "-o", str(dest), str(PLUGIN_SOURCE)],
        "building the QEMU plugin",
        timeout=120,
    )
    progress.update(task, advance=1)


def _compile_bytecode(sysroot: Path, progress: Progress) -> None:
    """Byte-compile the stdlib and wheels once, so each emulated start-up skips it.

    Debian compiles its .py files in postinst scripts, which ``dpkg -x`` does not run. The
    host compiles when it is a 3.11 (same magic number); otherwise the guest does.
    """
    task = progress.add_task("byte-compile python", total=1)
    dirs = [str(sysroot / "usr/lib/python3.11"), str(sysroot / GUEST_SITE.lstrip("/"))]
    if sys.version_info[:2] == (3, 11):
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", "-j0", *dirs],
            capture_output=True,
            check=False,
            timeout=600,
        )
    progress.update(task, advance=1)


def _smoke_test(sr: Sysroot, qemu: str) -> str:
    """Import the runtimes in the guest; returns the guest's python version."""
    from runtime_check.qemu import ensure_view

    view = ensure_view(sr.sysroot, sr.views, "cortex-a72")
    code = (
        "import sys, numpy, onnxruntime, ai_edge_litert.interpreter; print(sys.version.split()[0])"
    )
    proc = _run(
        [qemu, "-L", str(view), "-cpu", "cortex-a72", str(view) + GUEST_PYTHON, "-c", code],
        "the sysroot smoke test",
        env={
            "PYTHONPATH": GUEST_SITE,
            "PYTHONNOUSERSITE": "1",
            "LANG": "C.UTF-8",
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        },
        timeout=300,
    )
    return proc.stdout.strip()


def build(arch: str = "arm64", *, force: bool = False, progress: Progress) -> Sysroot:
    """Build the sysroot into the cache.

    Everything is fetched and unpacked in a temporary directory beside it. The new sysroot is
    then swapped in and smoke-tested in place; the previous one is kept aside until the new one
    passed and has its stamp, and is put back if any step fails or is interrupted.
    """
    sr = sysroot_for(arch)
    if not force and not problems(sr):
        return sr
    if not force and sr.root.exists():
        raise RuntimeCheckError(
            f"the {arch} sysroot in {sr.root} is unusable "
            f"({problems(sr)[0]}): run `edgepack target setup {arch} --force`"
        )
    qemu, qemu_version = find_qemu()
    for tool in ("apt-get", "dpkg"):
        if shutil.which(tool) is None:
            raise RuntimeCheckError(
                f"{tool} not found: building the {arch} sysroot needs a Debian-based machine"
            )
    started = time.monotonic()
    sr.root.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{arch}-build.", dir=sr.root.parent))
    try:
        new = Sysroot(arch, work / "out")
        new.sysroot.mkdir(parents=True)
        env = _apt_config(work)
        debs = _download_debs(work, env, progress)
        task = progress.add_task("extract .deb (dpkg -x)", total=len(debs))
        for deb in debs:
            _run(["dpkg", "-x", str(deb), str(new.sysroot)], f"dpkg -x {deb.name}", timeout=120)
            progress.update(task, advance=1)
        pins = host_versions()
        wheels = _download_wheels(work, pins, progress)
        task = progress.add_task("unpack wheels", total=len(wheels))
        new.site.mkdir(parents=True)
        versions = {}
        for whl in wheels:
            with zipfile.ZipFile(whl) as zf:
                zf.extractall(new.site)
            name, version = whl.name.split("-")[:2]
            versions[name.replace("_", "-").lower()] = version
            progress.update(task, advance=1)
        _compile_bytecode(new.sysroot, progress)
        _compile_plugin(new.plugin, progress)
        # Swap in, then smoke-test in place: views hold absolute links to the final path. The
        # previous sysroot waits in `work` (same file system: both moves are renames), which the
        # `finally` below removes once the new one is stamped.
        previous = work / "previous"
        if sr.root.exists():
            os.replace(sr.root, previous)
        os.replace(new.root, sr.root)
        try:
            task = progress.add_task("smoke test under qemu-aarch64", total=1)
            guest_python = _smoke_test(sr, qemu)
            progress.update(task, advance=1)
            stamp = {
                "format": STAMP_FORMAT,
                "arch": arch,
                "suite": SUITE,
                "python": guest_python,
                "wheels": {d: versions.get(d) for d in WHEELS},
                "all_wheels": versions,
                "debs": [d.name for d in debs],
                "qemu": qemu_version,
                "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "seconds": round(time.monotonic() - started, 1),
                "bytes": du(sr.sysroot),
            }
            sr.stamp.write_text(json.dumps(stamp, indent=2) + "\n")
        except BaseException:
            os.replace(sr.root, work / "failed")
            if previous.exists():
                os.replace(previous, sr.root)
            raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return sr


def du(path: Path) -> int:
    """Bytes under ``path`` (files only, symlinks not followed)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total
