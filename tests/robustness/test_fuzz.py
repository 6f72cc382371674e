"""Fuzzing: mutated ONNX / TFLite bytes into every reader, and random CNNs through the converter.

Mutations (bit flips, truncations, splices, zeroed runs) start from the real small models of
the session's output directory. Readers must return or raise their documented error type:
``EdgepackError`` for edgepack (``load_onnx``, ``edgepack inspect``), ``ArtifactError`` for
runtime_check's ``open_session`` (+ one inference). The native runtimes run in a forked child
with a time limit, so a segfault, abort or hang is recorded as a crash instead of killing the
test process; in-process readers run under a SIGALRM limit.

Hypothesis runs derandomized (fixed seed: the same examples on every run), without deadline
and without its example database, so a run is reproducible and leaves nothing behind.
Iteration and crash counts are printed (``pytest -s``) and kept in docs/robustness.md.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from exporter.cli import cli
from exporter.errors import EdgepackError
from exporter.onnx.export import load_onnx
from exporter.tflite import describe_tflite
from runtime_check.runtimes import ArtifactError, open_session

FUZZ = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate],
)
TIME_LIMIT_S = 10.0  # per reader call; the real ones take milliseconds

# What the TFLite reader raises on corrupt bytes today, and `edgepack inspect` maps to one
# line (exporter/cli/inspect_cmd.py). A type outside this set would be a traceback.


# --------------------------------------------------------------------------- mutations


@st.composite
def mutations(draw, size: int) -> tuple:
    """1-3 edits of a ``size``-byte seed, as a small tuple (it is what a failure report shows).

    Half of the positions fall in the first 2 KiB, where the structure lives (protobuf field
    headers; the flatbuffer root table, vtables and offsets).
    """
    edits = []
    for _ in range(draw(st.integers(1, 3))):
        head = draw(st.booleans())
        pos = draw(st.integers(0, min(size, 2048) - 1 if head else size - 1))
        kind = draw(st.sampled_from(["flip", "flip", "truncate", "splice", "zero"]))
        arg = {
            "flip": st.integers(0, 7),
            "truncate": st.just(0),
            "splice": st.tuples(st.integers(0, size - 1), st.integers(1, 256)),
            "zero": st.integers(1, 64),
        }[kind]
        edits.append((kind, pos, draw(arg)))
    return tuple(edits)


def mutate(seed: bytes, edits: tuple) -> bytes:
    """Apply ``edits``: bit flips, a truncation, a splice of the model into itself, zeroed runs."""
    data = bytearray(seed)
    for kind, pos, arg in edits:
        pos = min(pos, max(len(data) - 1, 0))
        if kind == "flip" and data:
            data[pos] ^= 1 << arg
        elif kind == "truncate":
            del data[pos:]
        elif kind == "splice":
            src, n = arg
            data[pos:pos] = seed[src : src + n]
        elif kind == "zero":
            data[pos : pos + arg] = bytes(len(data[pos : pos + arg]))
    return bytes(data)


# --------------------------------------------------------------------------- time limits


class _Hang(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float):
    """SIGALRM-based limit for pure-Python / quick native readers in this process."""

    def _raise(*_):
        raise _Hang(f"no answer within {seconds} s")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def in_child(fn, seconds: float = TIME_LIMIT_S) -> str:
    """Run ``fn`` in a forked child: 'ok', 'refused' (documented error), or the crash."""
    pid = os.fork()
    if pid == 0:  # child: report by exit status only, never return into pytest
        code = 0
        try:
            with open(os.devnull, "w") as null:  # LiteRT's INFO lines
                os.dup2(null.fileno(), 2)
            fn()
        except ArtifactError:
            code = 3
        except BaseException:
            code = 4
        os._exit(code)
    deadline = time.monotonic() + seconds
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "hang"
        time.sleep(0.002)
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return {0: "ok", 3: "refused"}.get(os.WEXITSTATUS(status), "undocumented exception")


def _open_and_run(path: Path):
    sess = open_session(path, 1, "xnnpack")
    shape = [d if d > 0 else 1 for d in sess.input.shape]
    sess.run(np.zeros(shape, np.dtype(sess.input.dtype)))


def _inspect(path: Path) -> tuple[int, str]:
    res = CliRunner().invoke(cli, ["inspect", str(path)], catch_exceptions=True)
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.output


def _check_inspect(path: Path, stats: Counter) -> None:
    with time_limit(TIME_LIMIT_S):
        code, output = _inspect(path)
    if code == 0:
        stats["inspect ok"] += 1
        return
    lines = [ln for ln in output.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), output
    stats["inspect refused"] += 1


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _report(name: str, stats: Counter) -> None:
    print(f"\nfuzz {name}: " + ", ".join(f"{k} {v}" for k, v in sorted(stats.items())))


# --------------------------------------------------------------------------- ONNX bytes


def test_fuzz_onnx_bytes(seed_out, scratch):
    seed = (seed_out / "model.fp32.onnx").read_bytes()
    stats: Counter = Counter()

    @FUZZ
    @given(mutations(len(seed)))
    @example((("truncate", len(seed) // 2, 0),))
    @example((("truncate", 0, 0),))
    def check(edits: tuple):
        data = mutate(seed, edits)
        stats["examples"] += 1
        path = scratch / "m.onnx"
        path.write_bytes(data)
        try:
            with time_limit(TIME_LIMIT_S):
                load_onnx(path)
            stats["load_onnx ok"] += 1
        except EdgepackError:
            stats["load_onnx refused"] += 1
        _check_inspect(path, stats)
        outcome = in_child(lambda: _open_and_run(path))
        stats[f"onnxruntime {outcome}"] += 1
        assert outcome in ("ok", "refused"), f"onnxruntime: {outcome}"

    check()
    _report("onnx", stats)
    assert stats["examples"] >= 100


# --------------------------------------------------------------------------- TFLite bytes


def test_fuzz_tflite_bytes(seed_out, scratch):
    seed = (seed_out / "model.fp32.tflite").read_bytes()
    stats: Counter = Counter()

    @FUZZ
    @given(mutations(len(seed)))
    @example((("truncate", 3000, 0),))
    @example((("truncate", 7, 0),))
    @example((("truncate", 0, 0),))
    def check(edits: tuple):
        data = mutate(seed, edits)
        stats["examples"] += 1
        path = scratch / "m.tflite"
        path.write_bytes(data)
        try:
            with time_limit(TIME_LIMIT_S):
                describe_tflite(path)
            stats["describe_tflite ok"] += 1
        except EdgepackError:  # anything else escaping is a failure of this test
            stats["describe_tflite refused"] += 1
        _check_inspect(path, stats)
        outcome = in_child(lambda: _open_and_run(path))
        stats[f"litert {outcome}"] += 1
        assert outcome in ("ok", "refused"), f"LiteRT: {outcome}"

    check()
    _report("tflite", stats)
    assert stats["examples"] >= 100


def test_describe_tflite_raises_edgepack_errors(seed_out, tmp_path):
    seed = (seed_out / "model.fp32.tflite").read_bytes()
    for data in (b"", seed[:7], seed[:3000], b"xxxxTFL3" + bytes(64)):
        with pytest.raises(EdgepackError):
            describe_tflite(data)
    with pytest.raises(EdgepackError):
        describe_tflite(tmp_path / "missing.tflite")
