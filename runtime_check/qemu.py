"""QemuRunner: run ``python -m runtime_check`` on an ARM64 sysroot under ``qemu-aarch64``.

Stdlib only. The sysroot (Debian arm64 python3.11 + the runtimes' aarch64 wheels) is built by
``edgepack target setup arm64``; this module only runs it. Three things make the figures right:

- QEMU hands the host's x86 ``/proc/cpuinfo`` to the guest, on which onnxruntime crashes and
  XNNPACK picks kernels for the wrong CPU. QEMU's ``-L`` looks up absolute guest paths under its
  prefix first, so each CPU model gets a *view*: a directory of symlinks into the sysroot plus
  its own ``proc/cpuinfo`` (and ``sys/.../possible``). One sysroot then serves every CPU model,
  concurrently, without rewriting shared files.
- Emulated wall time is not a measurement; results are flagged ``emulated`` and the
  deterministic figure is the guest instruction count, taken by the ``insn_count`` plugin between
  the markers that :mod:`runtime_check.evaluate` emits around a window of inferences of its own.
- ``-cpu max`` computes wrong XNNPACK int8 results on QEMU 7.2, so only named models are used.

The counts repeat exactly run to run. They did not while the window held the timing loop: the
clock reads and list appends of the timer added a varying count (~0.3 %), so the counted window
runs the same inferences again with nothing else in it; ``-seed`` and a single guest thread
remove the other sources of variation.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from runtime_check.runners import CheckOptions, Runner, RunnerError

# Guest paths inside the sysroot (resolved by QEMU under -L).
GUEST_PYTHON = "/usr/bin/python3.11"
GUEST_SITE = "/opt/edgepack/site-packages"
# Read by runtime_check.evaluate after its stop marker: the plugin writes the count there.
INSN_FILE_ENV = "RUNTIME_CHECK_INSN_FILE"

_BASE_FEATURES = "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid"
_V82_FEATURES = (
    "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm "
    "lrcpc dcpop asimddp ssbs"
)


@dataclass(frozen=True)
class CpuModel:
    """What Linux shows in /proc/cpuinfo for one core: XNNPACK and cpuinfo key on the part."""

    part: str
    variant: str
    revision: int
    features: str
    cores: int = 4


# The QEMU -cpu models edgepack accepts, with the cpuinfo of the real chip. Features are what
# QEMU's model advertises in HWCAP, so the file and getauxval() agree.
CPU_MODELS: dict[str, CpuModel] = {
    "cortex-a53": CpuModel("0xd03", "0x0", 4, _BASE_FEATURES),
    "cortex-a72": CpuModel("0xd08", "0x0", 3, _BASE_FEATURES),
    "cortex-a76": CpuModel("0xd0b", "0x4", 1, _V82_FEATURES),
    "neoverse-n1": CpuModel("0xd0c", "0x3", 1, _V82_FEATURES),
}


def cpuinfo_text(cpu: str) -> str:
    """An ARM64 Linux /proc/cpuinfo for ``cpu`` (one block per core)."""
    m = CPU_MODELS[cpu]
    block = (
        "processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: {f}\nCPU implementer\t: 0x41\n"
        "CPU architecture: 8\nCPU variant\t: {v}\nCPU part\t: {p}\nCPU revision\t: {r}\n\n"
    )
    return "".join(
        block.format(i=i, f=m.features, v=m.variant, p=m.part, r=m.revision) for i in range(m.cores)
    )


def ensure_view(sysroot: Path, views_dir: Path, cpu: str) -> Path:
    """The -L prefix for ``cpu``: symlinks to the sysroot's top-level entries + its cpuinfo.

    Made once per CPU model, atomically (built under a temporary name, then renamed), so
    concurrent runs never see half a view.
    """
    if cpu not in CPU_MODELS:
        raise RunnerError(
            f"QEMU CPU model '{cpu}' is not supported (use one of: {', '.join(CPU_MODELS)})"
        )
    sysroot = sysroot.resolve()
    view = views_dir / cpu
    expected = cpuinfo_text(cpu)
    cpuinfo = view / "proc" / "cpuinfo"
    if cpuinfo.is_file() and cpuinfo.read_text() == expected and (view / "usr").exists():
        return view
    views_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cpu}.", dir=views_dir))
    for entry in sysroot.iterdir():
        if entry.name not in ("proc", "sys"):
            (tmp / entry.name).symlink_to(entry)
    (tmp / "proc").mkdir()
    (tmp / "proc" / "cpuinfo").write_text(expected)
    cpu_dir = tmp / "sys" / "devices" / "system" / "cpu"
    cpu_dir.mkdir(parents=True)
    span = f"0-{CPU_MODELS[cpu].cores - 1}\n"
    for name in ("possible", "present", "online"):
        (cpu_dir / name).write_text(span)
    try:
        os.replace(tmp, view)  # succeeds when `view` is absent or an empty directory
    except OSError:
        # Another run made it first, or a stale view is in the way: replace that one.
        stale = views_dir / f".stale.{os.getpid()}.{cpu}"
        with contextlib.suppress(OSError):
            os.replace(view, stale)
        try:
            os.replace(tmp, view)
        except OSError:
            _rmtree(tmp)
        _rmtree(stale)
    return view


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


class QemuRunner(Runner):
    """runtime_check in an ARM64 python3.11 under ``qemu-aarch64 -cpu CPU``."""

    # One artifact per emulated process: an artifact's instruction count then does not depend
    # on which other artifacts the same process checked before it (their heap changes the
    # buffers' alignment, and XNNPACK's instruction count by ~0.1 %).
    one_artifact_per_call = True

    def __init__(
        self,
        *,
        qemu: str,
        sysroot: Path,
        views_dir: Path,
        cpu: str,
        plugin: Path | None = None,
        qemu_version: str = "",
    ):
        if cpu not in CPU_MODELS:
            raise RunnerError(
                f"QEMU CPU model '{cpu}' is not supported (use one of: {', '.join(CPU_MODELS)})"
            )
        self.qemu = qemu
        self.sysroot = Path(sysroot)
        self.views_dir = Path(views_dir)
        self.cpu = cpu
        self.plugin = Path(plugin) if plugin else None
        self.qemu_version = qemu_version
        self.name = f"qemu:{cpu}"

    def command(self, view: Path, count_file: Path | None, args: list[str]) -> list[str]:
        # -seed: the guest's AT_RANDOM and getrandom() become repeatable, one less source of
        # run-to-run differences in the instruction counts.
        cmd = [self.qemu, "-L", str(view), "-cpu", self.cpu, "-seed", "1"]
        if self.plugin and count_file:
            cmd += ["-plugin", f"{self.plugin},outfile={count_file}"]
        return [*cmd, str(view) + GUEST_PYTHON, *args]

    def environment(self, count_file: Path | None) -> dict[str, str]:
        # The guest reads the host's runtime_check sources directly: a path absent under the -L
        # prefix falls through to the host file system. A fixed hash seed and one BLAS thread
        # keep the instruction counts repeatable.
        package_parent = Path(__file__).resolve().parent.parent
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "PYTHONPATH": f"{GUEST_SITE}:{package_parent}",
            "PYTHONHASHSEED": "0",
            "PYTHONNOUSERSITE": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
        }
        if count_file:
            env[INSN_FILE_ENV] = str(count_file)
        return env

    def run(self, artifacts: list[Path], batch: Path, options: CheckOptions) -> dict:
        view = ensure_view(self.sysroot, self.views_dir, self.cpu)
        args = self.command_args(
            [str(Path(a).resolve()) for a in artifacts], str(Path(batch).resolve()), options
        )
        with tempfile.TemporaryDirectory(prefix="edgepack-qemu-") as tmp:
            count_file = Path(tmp) / "insn_count" if self.plugin else None
            try:
                proc = subprocess.run(
                    self.command(view, count_file, args),
                    capture_output=True,
                    text=True,
                    timeout=options.timeout_s,
                    check=False,
                    env=self.environment(count_file),
                )
            except FileNotFoundError:
                raise RunnerError(f"{self.qemu} not found (apt-get install qemu-user)") from None
            except subprocess.TimeoutExpired:
                raise RunnerError(
                    f"runtime_check under QEMU ({self.cpu}) timed out after "
                    f"{options.timeout_s:.0f} s"
                ) from None
        out = self.parse(proc.stdout, proc.stderr, proc.returncode)
        return self.mark_emulated(out)

    def mark_emulated(self, out: dict) -> dict:
        """Flag wall-time figures as emulated; say which emulator and CPU model produced them."""
        for res in out.get("results", []):
            if "latency_ms" in res:
                res["latency_ms"]["emulated"] = True
                res["emulated"] = True
        emulator = {
            "name": "qemu-aarch64",
            "version": self.qemu_version,
            "cpu": self.cpu,
            "instruction_counts": self.plugin is not None,
        }
        out["emulator"] = emulator
        if isinstance(out.get("cpu"), dict):
            out["cpu"]["emulated"] = f"qemu-aarch64 {self.qemu_version} -cpu {self.cpu}".strip()
        return out
