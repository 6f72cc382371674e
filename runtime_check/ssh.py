"""SshRunner: run ``python -m runtime_check`` on another Linux machine (a Raspberry Pi...).

Stdlib only. Uses the system ``ssh`` so the user's ~/.ssh/config, keys and agent apply, always
with ``BatchMode=yes`` (never a prompt) and the user's host-key checking: an unknown or changed
host key is an error, never accepted silently.

One connection per check: the runtime_check package, the artifacts and the eval batch travel as
a tar stream on ssh's stdin into a fresh ``mktemp -d`` directory, which the remote shell removes
on exit (``trap``), whatever happens. Before the check the device's python, numpy and the
artifacts' runtimes are probed, so a missing one is one line saying what to ``pip install``.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import tarfile
from pathlib import Path

from runtime_check.runners import CheckOptions, Runner, RunnerError

TMP_PREFIX = "edgepack-rc."
SSH_OPTIONS_ENV = "EDGEPACK_SSH_OPTIONS"

# Exit codes of the remote script (chosen clear of python's and ssh's).
_NO_TMP, _NO_TAR, _NO_PYTHON, _MISSING = 71, 72, 73, 75
_TIMEOUT = 124  # coreutils timeout

# Runs on the device with its python: which of numpy and the runtimes import. Kept to the
# language of python 3.6 so an old device gets a clear message rather than a SyntaxError.
_PROBE = r"""
import sys
if sys.version_info < (3, 8):
    print("edgepack-missing: python>=3.8 (found %d.%d)" % sys.version_info[:2]); sys.exit(75)
def ok(mod):
    try:
        __import__(mod); return True
    except Exception:
        return False
if not ok("numpy"):
    print("edgepack-missing: numpy"); sys.exit(75)
missing = [need for need in sys.argv[1:] if not any(ok(m) for m in need.split(","))]
if missing:
    print("edgepack-missing: " + " ".join(missing)); sys.exit(75)
"""

# Modules tried per artifact suffix, as runtime_check.runtimes tries them.
_RUNTIME_MODULES = {
    ".onnx": "onnxruntime",
    ".tflite": "ai_edge_litert.interpreter,tflite_runtime.interpreter",
}
_INSTALL_HINT = {
    "numpy": "numpy is not installed for {py} there (pip install numpy)",
    "onnxruntime": "onnxruntime is not installed for {py} there (pip install onnxruntime)",
    "ai_edge_litert.interpreter,tflite_runtime.interpreter": "no TFLite runtime for {py} there (pip install ai-edge-litert, or tflite-runtime with "
    "numpy<2 on older systems)",
}


def parse_host(host: str) -> tuple[str, str | None]:
    """``user@host[:port]`` -> (``user@host``, port or None); ``[v6addr]:port`` works too."""
    m = re.fullmatch(
        r"(?:(?P<user>[^@\s]+)@)?(?P<h>\[[^\]]+\]|[^:@\s\[\]]+)(?::(?P<port>\d+))?", host.strip()
    )
    if not m:
        raise RunnerError(f"--host {host!r}: expected user@host[:port]")
    name = m.group("h").strip("[]")
    dest = f"{m.group('user')}@{name}" if m.group("user") else name
    return dest, m.group("port")


class SshRunner(Runner):
    """runtime_check on ``host`` over the system ssh client."""

    def __init__(
        self,
        host: str,
        *,
        python: str = "python3",
        ssh_options: list[str] | tuple = (),
        connect_timeout_s: float = 10.0,
        ssh: str = "ssh",
    ):
        self.host = host
        self.dest, self.port = parse_host(host)
        self.python = python
        env_opts = shlex.split(os.environ.get(SSH_OPTIONS_ENV, ""))
        self.ssh_options = [*ssh_options, *env_opts]
        self.connect_timeout_s = connect_timeout_s
        self.ssh = ssh
        self.name = f"ssh:{host}"

    def ssh_command(self, remote: str) -> list[str]:
        cmd = [
            self.ssh,
            "-o",
            "BatchMode=yes",
            "-o",
            f"ConnectTimeout={max(1, round(self.connect_timeout_s))}",
            "-o",
            "ServerAliveInterval=15",
            "-o",
            "ServerAliveCountMax=4",
        ]
        if self.port:
            cmd += ["-p", self.port]
        # The remote login shell may be anything (fish, zsh): hand the script to sh.
        return [*cmd, *self.ssh_options, "--", self.dest, "sh -c " + shlex.quote(remote)]

    def payload(self, artifacts: list[Path], batch: Path) -> tuple[bytes, list[str]]:
        """A tar of the runtime_check package, the artifacts and the batch; and their names."""
        buf = io.BytesIO()
        names = []
        package = Path(__file__).resolve().parent
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for src in sorted(package.glob("*.py")):
                tar.add(src, arcname=f"runtime_check/{src.name}")
            for i, art in enumerate(artifacts):
                name = Path(art).name
                if name in names or name == "eval_batch.npz":
                    name = f"{i}-{name}"
                tar.add(art, arcname=f"artifacts/{name}")
                names.append(name)
            tar.add(batch, arcname="eval_batch.npz")
        return buf.getvalue(), names

    def script(self, names: list[str], needs: list[str], options: CheckOptions) -> str:
        args = self.command_args([f"artifacts/{n}" for n in names], "eval_batch.npz", options)
        py = shlex.quote(self.python)
        run = " ".join(shlex.quote(a) for a in args)
        limit = max(1, int(options.timeout_s))
        return f"""
umask 077
d=$(mktemp -d "${{TMPDIR:-/tmp}}/{TMP_PREFIX}XXXXXXXX") || exit {_NO_TMP}
trap 'rm -rf "$d"' EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM
echo "edgepack-tmp: $d" >&2
pg=$$
[ -r /proc/$$/stat ] && read -r _ _ _ _ pg _ < /proc/$$/stat
echo "edgepack-pgid: $pg" >&2
cd "$d" && tar -xf - || exit {_NO_TAR}
command -v {py} >/dev/null 2>&1 || exit {_NO_PYTHON}
{py} -c {shlex.quote(_PROBE)} {" ".join(shlex.quote(n) for n in needs)} || exit $?
T=""
command -v timeout >/dev/null 2>&1 && T="timeout {limit}"
PYTHONPATH="$d" PYTHONDONTWRITEBYTECODE=1 OPENBLAS_NUM_THREADS=1 $T {py} {run}
"""

    def run(self, artifacts: list[Path], batch: Path, options: CheckOptions) -> dict:
        data, names = self.payload([Path(a) for a in artifacts], Path(batch))
        needs = sorted(
            {
                _RUNTIME_MODULES[Path(a).suffix]
                for a in artifacts
                if Path(a).suffix in _RUNTIME_MODULES
            }
        )
        cmd = self.ssh_command(self.script(names, needs, options))
        remote_dir = pgid = None
        try:
            try:
                proc = subprocess.run(
                    cmd,
                    input=data,
                    capture_output=True,
                    check=False,
                    timeout=options.timeout_s + self.connect_timeout_s + 30,
                )
            except FileNotFoundError:
                raise RunnerError(
                    f"{self.ssh} not found (apt-get install openssh-client)"
                ) from None
            except subprocess.TimeoutExpired as exc:
                remote_dir, pgid = _remote_session((exc.stderr or b"").decode(errors="replace"))
                raise RunnerError(
                    f"{self.host}: runtime_check timed out after {options.timeout_s:.0f} s"
                ) from None
            stdout = proc.stdout.decode(errors="replace")
            stderr = proc.stderr.decode(errors="replace")
            return self._result(proc.returncode, stdout, stderr, options)
        finally:
            if remote_dir:
                self._cleanup(remote_dir, pgid)

    def _result(self, rc: int, stdout: str, stderr: str, options: CheckOptions) -> dict:
        py = self.python
        if rc == 255:
            raise RunnerError(self._ssh_error(stderr))
        if rc == _NO_PYTHON:
            raise RunnerError(
                f"{self.host}: '{py}' not found on the device (install python3 "
                "there, or set device.python to its interpreter)"
            )
        if rc == _MISSING:
            # Every runtime the artifacts need and the device lacks, in one line.
            m = re.search(r"edgepack-missing: (.*)", stdout)
            text = m.group(1).strip() if m else "?"
            needs = text.split() if all(w in _INSTALL_HINT for w in text.split()) else [text]
            hints = [_INSTALL_HINT.get(w, f"{w} is missing for {{py}} there") for w in needs]
            raise RunnerError(f"{self.host}: " + "; ".join(h.format(py=py) for h in hints))
        if rc == _NO_TMP:
            raise RunnerError(f"{self.host}: cannot create a temporary directory (mktemp -d)")
        if rc == _NO_TAR:
            raise RunnerError(
                f"{self.host}: could not unpack the check files (is tar installed "
                "and /tmp writable?)"
            )
        if rc == _TIMEOUT:
            raise RunnerError(
                f"{self.host}: runtime_check timed out after {options.timeout_s:.0f} s"
            )
        try:
            return self.parse(stdout, _without_markers(stderr), rc)
        except RunnerError as exc:
            raise RunnerError(f"{self.host}: {exc}") from None

    def _ssh_error(self, stderr: str) -> str:
        lines = [
            ln.strip()
            for ln in _without_markers(stderr).splitlines()
            if ln.strip() and not ln.startswith("@")
        ]
        text = " ".join(lines)
        last = lines[-1] if lines else "ssh exit status 255"
        lowered = text.lower()
        if "IDENTIFICATION HAS CHANGED" in stderr or (
            "host key for" in lowered and "has changed" in lowered
        ):
            return (
                f"{self.host}: the host key has CHANGED since it was recorded in known_hosts "
                "(reinstalled device, or someone in between); check it, then remove the old "
                f"one with `ssh-keygen -R {self._known_hosts_name()}`"
            )
        if "Host key verification failed" in text or re.search(r"No \S+ host key is known", text):
            return (
                f"{self.host}: host key unknown or not trusted; connect once with "
                f"`ssh {self._ssh_hint()}` to check and record it"
            )
        if "Permission denied" in text or "Too many authentication failures" in text:
            return (
                f"{self.host}: authentication refused ({last}); set up key login, e.g. "
                f"`ssh-copy-id {self._ssh_hint()}`"
            )
        unreachable = (
            "Connection refused",
            "Connection timed out",
            "No route to host",
            "Could not resolve hostname",
            "Network is unreachable",
            "Operation timed out",
            "Connection closed",
            "Connection reset",
            "timed out during banner exchange",
            "Name or service not known",
        )
        if any(u in text for u in unreachable):
            return f"{self.host}: unreachable ({last})"
        return f"{self.host}: ssh failed ({last})"

    def _known_hosts_name(self) -> str:
        name = self.dest.split("@")[-1]
        return f"[{name}]:{self.port}" if self.port else name

    def _ssh_hint(self) -> str:
        return f"-p {self.port} {self.dest}" if self.port else self.dest

    def _cleanup(self, remote_dir: str, pgid: int | None) -> None:
        """Best effort after a local timeout: closing ssh does not stop what the check started
        there (no terminal, no SIGHUP), and the remote trap may not have run. The check's
        process group is stopped (TERM, then KILL) while its temp directory still exists, which
        means the check has not ended by itself; then the directory is removed."""
        if not re.fullmatch(rf"/[\w./-]*/{re.escape(TMP_PREFIX)}\w+", remote_dir):
            return
        d = shlex.quote(remote_dir)
        stop = ""
        if pgid is not None and pgid > 1:  # never `kill -TERM -1`: every process of the user
            stop = (
                f"if [ -d {d} ]; then kill -TERM -{pgid} 2>/dev/null; sleep 1; "
                f"kill -KILL -{pgid} 2>/dev/null; fi; "
            )
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(
                self.ssh_command(f"{stop}rm -rf {d}"),
                capture_output=True,
                timeout=self.connect_timeout_s + 20,
                check=False,
                stdin=subprocess.DEVNULL,
            )


def _remote_session(stderr: str) -> tuple[str | None, int | None]:
    """The remote temp directory and process group the script announced on stderr."""
    d = re.search(r"^edgepack-tmp: (\S+)$", stderr, re.M)
    pg = re.search(r"^edgepack-pgid: (\d+)$", stderr, re.M)
    return (d.group(1) if d else None), (int(pg.group(1)) if pg else None)


def _without_markers(stderr: str) -> str:
    return "\n".join(
        ln for ln in stderr.splitlines() if not ln.startswith(("edgepack-tmp: ", "edgepack-pgid: "))
    )
