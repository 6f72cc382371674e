"""Validate one artifact on an eval batch: accuracy, agreement, max |Δ|, latency, memory."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

from runtime_check.batch import load_batch
from runtime_check.runtimes import ArtifactError, RuntimeUnavailable, open_session

__all__ = ["evaluate_artifact", "evaluate_isolated", "load_batch", "logits_for"]

# ru_maxrss is in kilobytes on Linux and bytes on macOS.
_RSS_UNIT = 1024 if sys.platform == "darwin" else 1

# Marker syscalls around the timed loop: close() of descriptors no process can have open. It
# fails at once (EBADF) on a real device; under QEMU the insn_count plugin sees the syscall and
# counts guest instructions between the two, writing the count to $RUNTIME_CHECK_INSN_FILE.
MARK_START = 1_000_001
MARK_STOP = 1_000_002
INSN_FILE_ENV = "RUNTIME_CHECK_INSN_FILE"


def _marker(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def _instructions_counted() -> int | None:
    """The plugin's count for the last window, or None when not running under it."""
    path = os.environ.get(INSN_FILE_ENV)
    if not path:
        return None
    try:
        with open(path, encoding="ascii") as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return None


def _layout(input_shape: list[int], chw: tuple[int, int, int], hint: str | None, fmt: str) -> str:
    c, h, w = chw
    tail = tuple(input_shape[1:])
    fits = [name for name, dims in (("nchw", (c, h, w)), ("nhwc", (h, w, c))) if tail == dims]
    if not fits:
        raise ArtifactError(
            f"model input is {list(input_shape)} but the eval batch is [N,{c},{h},{w}] (NCHW)"
        )
    if hint in fits:
        return hint
    if len(fits) == 1:
        return fits[0]
    return "nhwc" if fmt == "tflite" else "nchw"


def wants_raw_pixels(spec, batch: dict[str, np.ndarray]) -> bool:
    """A uint8 input without a scaling of its own takes camera pixels as they are.

    edgepack's uint8-input models fold /255 and the mean/std into the first layer, so their
    input tensor carries no quantization (or the identity 1.0 / 0); they are fed the batch's
    raw ``images`` (uint8 NHWC) rather than the normalized floats.
    """
    return (
        spec.dtype == "uint8"
        and "images" in batch
        and spec.scale in (None, 1.0)
        and spec.zero_point in (None, 0)
    )


def _prepare(x: np.ndarray, layout: str, spec) -> np.ndarray:
    """Float NCHW batch -> what the model's input wants (layout, dtype, quantization)."""
    if layout == "nhwc":
        x = x.transpose(0, 2, 3, 1)
    if spec.dtype in ("int8", "uint8"):
        info = np.iinfo(spec.dtype)
        q = np.round(x / spec.scale) + spec.zero_point
        x = np.clip(q, info.min, info.max).astype(spec.dtype)
    else:
        x = x.astype(np.float32)
    return np.ascontiguousarray(x)


def _percentiles(samples_ms: list[float]) -> dict:
    arr = np.asarray(samples_ms)
    return {
        "p50": float(np.percentile(arr, 50)),
        "p90": float(np.percentile(arr, 90)),
        "mean": float(arr.mean()),
        "runs": len(samples_ms),
    }


def _resident_mb() -> float | None:
    """This process's resident memory now (Linux; under QEMU, the emulator's)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def gzip_size(path: Path) -> int:
    # mtime=0 keeps the figure independent of when it was measured.
    return len(gzip.compress(path.read_bytes(), compresslevel=9, mtime=0))


# Input bytes per runtime call: up to 256 images, fewer for large ones (ResNet-50 at 224x224
# takes 27 a call), so one call's activations stay in the hundreds of MB: 256 such images a call
# peaked at 4.4 GB.
CALL_INPUT_BYTES = 16 << 20


def _run_all(sess, x: np.ndarray) -> np.ndarray:
    if sess.batchable:
        step = max(1, min(256, CALL_INPUT_BYTES // max(1, x[:1].nbytes)))
        logits = np.concatenate([sess.run(x[i : i + step]) for i in range(0, len(x), step)])
    else:
        logits = np.concatenate([sess.run(x[i : i + 1]) for i in range(len(x))])
    return logits.reshape(len(x), -1).astype(np.float32)


def logits_for(
    path: str | Path,
    batch: str | Path,
    *,
    threads: int = 1,
    delegate: str = "xnnpack",
    layout: str | None = None,
) -> np.ndarray:
    """The artifact's float logits on every image of the eval batch (for comparing devices)."""
    path = Path(path)
    inputs = load_batch(batch)["inputs"]
    sess = open_session(path, threads, delegate)
    lay = _layout(sess.input.shape, tuple(inputs.shape[1:]), layout, path.suffix.lstrip("."))
    return _run_all(sess, _prepare(inputs, lay, sess.input))


def _measure(
    sess, batch: dict[str, np.ndarray], fmt: str, layout: str | None, before: float | None
) -> tuple[dict, np.ndarray]:
    """Input description, memory, accuracy and agreement of an opened artifact on the batch,
    and the prepared inputs the timing runs on."""
    inputs, labels, ref = batch["inputs"], batch["labels"], batch["reference_logits"]
    lay = _layout(sess.input.shape, tuple(inputs.shape[1:]), layout, fmt)
    raw = wants_raw_pixels(sess.input, batch)
    if raw and lay != "nhwc":
        raise ArtifactError("a raw-pixel uint8 input must be NHWC")

    def prepared(n: int | None) -> np.ndarray:
        if raw:
            return np.ascontiguousarray(batch["images"][:n])
        return _prepare(inputs[:n], lay, sess.input)

    out: dict = {
        "input": {
            "layout": lay,
            "dtype": sess.input.dtype,
            "shape": sess.input.shape,
            "scale": sess.input.scale,
            "zero_point": sess.input.zero_point,
            "raw_pixels": raw,
        }
    }
    sess.run(prepared(1))
    after = _resident_mb()
    if before is not None and after is not None:
        # What the runtime, the model and one inference's buffers add, measured before the
        # eval batch is prepared (peak_rss_mb includes it): what a device budget is about.
        out["model_rss_mb"] = round(max(after - before, 0.0), 2)
    x = prepared(None)
    logits = _run_all(sess, x)
    if logits.shape != ref.shape:
        raise ArtifactError(
            f"output shape {list(logits.shape)} differs from the reference {list(ref.shape)}"
        )
    pred = logits.argmax(1)
    out["samples"] = len(x)
    out["accuracy"] = float((pred == labels).mean() * 100.0)
    out["agreement"] = float((pred == ref.argmax(1)).mean())
    out["max_abs_diff"] = float(np.abs(logits - ref).max())
    # Top-1 per image, so artifacts can be compared with each other (parity), not only
    # with the reference.
    out["predictions"] = pred.astype(int).tolist()
    return out, x


def _timed(sess, x: np.ndarray, warmup: int, runs: int) -> dict:
    """Batch-1 latency percentiles and, under the QEMU plugin, instructions per inference."""
    for _ in range(warmup):
        sess.run(x[:1])
    times = []
    for i in range(runs):
        one = x[i % len(x) : i % len(x) + 1]
        t0 = time.perf_counter_ns()
        sess.run(one)
        times.append((time.perf_counter_ns() - t0) / 1e6)
    out: dict = {"latency_ms": _percentiles(times)}
    if os.environ.get(INSN_FILE_ENV):
        # A window of its own for the instruction counter, with nothing but the inferences
        # in it: the timing calls above would add instructions of their own.
        slices = [x[i % len(x) : i % len(x) + 1] for i in range(runs)]
        _marker(MARK_START)
        for one in slices:
            sess.run(one)
        _marker(MARK_STOP)
        counted = _instructions_counted()
        if counted is not None:
            out["instructions_per_inference"] = counted / runs
    return out


def evaluate_artifact(
    path: str | Path,
    batch: dict[str, np.ndarray],
    *,
    threads: int = 1,
    warmup: int = 10,
    runs: int = 100,
    delegate: str = "xnnpack",
    layout: str | None = None,
    runtime: str | None = None,
) -> dict:
    """One artifact's figures as a JSON-ready dict (``status`` ok / skipped / error).

    Under TFLM (``runtime="tflm"``) the memory figures are the board's, ``arena_bytes`` and
    ``flash_bytes``, and nothing is timed: reference kernels on this CPU are not the board."""
    path = Path(path)
    fmt = path.suffix.lstrip(".")
    result: dict = {"path": path.name, "format": fmt, "threads": threads, "status": "ok"}
    if not path.is_file():
        return {**result, "status": "error", "reason": f"{path} not found"}
    result["bytes"] = path.stat().st_size
    result["gzip_bytes"] = gzip_size(path)
    before = _resident_mb()
    try:
        sess = open_session(path, threads, delegate, runtime)
    except RuntimeUnavailable as exc:
        return {**result, "status": "skipped", "reason": str(exc)}
    except ArtifactError as exc:
        return {**result, "status": "error", "reason": str(exc)}
    result.update(runtime=sess.runtime, runtime_version=sess.version, delegate=sess.delegate)
    if getattr(sess, "ops_outside_delegate", None) is not None:
        result["ops_outside_delegate"] = sess.ops_outside_delegate
    try:
        figures, x = _measure(sess, batch, fmt, layout, before)
        result.update(figures)
        if runtime == "tflm":
            result.update(
                arena_bytes=sess.arena_bytes,
                arena_breakdown=sess.arena_breakdown,
                flash_bytes=result["bytes"],
            )
            result.pop("model_rss_mb", None)  # this process's, not the board's
        else:
            result.update(_timed(sess, x, warmup, runs))
    except ArtifactError as exc:
        return {**result, "status": "error", "reason": str(exc)}
    return result


def evaluate_isolated(path: str | Path, batch: dict[str, np.ndarray], **kwargs) -> dict:
    """Run :func:`evaluate_artifact` in a forked child so peak RSS is this artifact's own."""
    if not hasattr(os, "fork"):
        out = evaluate_artifact(path, batch, **kwargs)
        out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _RSS_UNIT / 1024
        return out
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_fd)
        code = 0
        try:
            payload = json.dumps(evaluate_artifact(path, batch, **kwargs)).encode()
        except BaseException as exc:  # report, never hang the parent
            payload = json.dumps(
                {
                    "path": Path(path).name,
                    "status": "error",
                    "reason": f"{type(exc).__name__}: {exc}",
                }
            ).encode()
            code = 1
        with os.fdopen(write_fd, "wb") as fh:
            fh.write(payload)
        os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as fh:
        data = fh.read()
    _, status, usage = os.wait4(pid, 0)
    if not data:
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        why = f"killed by signal {sig}" if sig else f"exit status {os.WEXITSTATUS(status)}"
        return {
            "path": Path(path).name,
            "status": "error",
            "reason": f"the runtime crashed while checking this artifact ({why})",
        }
    out = json.loads(data)
    out["peak_rss_mb"] = usage.ru_maxrss * _RSS_UNIT / 1024
    return out
