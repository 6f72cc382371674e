"""TensorFlow Lite Micro (the ``tflite-micro`` package): TFLM's own C++ kernels, run here.

What a microcontroller target needs to know before flashing a model: whether TFLM has a kernel
for every operator (asked of TFLM itself: its allocation fails on the first op its resolver
lacks, and says which), the smallest tensor arena the model runs in (found by bisection on
``arena_size``), the recording allocator's breakdown of that arena, and the model's flash
bytes.

Not every arena below the minimum fails cleanly: in a band just under it TFLM's allocator
crashes the process (SIGSEGV; seen with tflite-micro 0.dev20261023 at 5,184-5,198 bytes for a
model whose minimum is 5,200), so every trial size is allocated in a forked child and a crash
counts as "too small". Wall time on this machine's reference kernels is not the
board's latency and is never reported as one.

Imports numpy and tflite_micro only (lazily: a machine without it reports the artifact skipped).
TFLM prints its diagnostics from C++ on file descriptor 2, so they are captured there, not on
``sys.stderr`` (and never reach stdout, which carries runtime_check's JSON).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime_check.runtimes import ArtifactError, IOSpec, RuntimeUnavailable, _version

# TFLM's micro_op_resolver: "Didn't find op for builtin opcode '%s'" (then "Failed to get
# registration from op code %s") when its resolver has no kernel for an operator.
_MISSING_OP = re.compile(r"Didn't find op for builtin opcode '([A-Z0-9_]+)'")
_ALLOCATION = re.compile(r"\[RecordingMicroAllocator\] (.+)")
# An arena this much larger than the model is tried first; the search doubles from there.
_FIRST_GUESS = 4
_MAX_ARENA = 1 << 30
# Below ~400 bytes TFLM's allocator crashes (SIGSEGV, tflite-micro 0.dev20261023) instead of
# failing; 1 KiB fails cleanly and is less than any model needs, so the search starts there.
_FLOOR = 1024
# The recording allocator's own bookkeeping lives in the arena too: the figure is an upper
# bound of what the board's plain MicroAllocator needs (by a few hundred bytes).
ARENA_NOTE = (
    "smallest arena TFLM's recording allocator ran the model in (bisection); "
    "code size of TFLM and the application not included in flash_bytes"
)


def _runtime_module():
    try:
        return importlib.import_module("tflite_micro.python.tflite_micro.runtime")
    except ImportError:
        raise RuntimeUnavailable(
            "tflite-micro is not installed (pip install tflite-micro)"
        ) from None


def tflm_version() -> str | None:
    try:
        return _version("tflite-micro", _runtime_module())
    except RuntimeUnavailable:
        return None


@contextlib.contextmanager
def captured_fd2() -> Iterator[list[str]]:
    """What C++ writes on file descriptor 2 meanwhile, as lines (appended on exit)."""
    lines: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(sink.read().decode("utf-8", "replace").splitlines())


@dataclass
class Allocation:
    """One try at allocating the model in an arena of ``arena`` bytes."""

    ok: bool
    log: list[str]
    interpreter: object | None = None

    @property
    def missing_op(self) -> str | None:
        for line in self.log:
            m = _MISSING_OP.search(line)
            if m:
                return m.group(1)
        return None


def allocate(model: bytes, arena: int) -> Allocation:
    """Build TFLM's interpreter on ``model`` with an ``arena``-byte arena (TFLM allocates every
    tensor there at construction) and run one inference on zeros, so an arena that allocates
    but cannot run is not taken for enough."""
    rt = _runtime_module()
    with captured_fd2() as log:
        try:
            it = rt.Interpreter.from_bytes(model, arena_size=arena)
            detail = it.get_input_details(0)
            it.set_input(np.zeros(detail["shape"], detail["dtype"]), 0)
            it.invoke()
        except (RuntimeError, ValueError):
            it = None
    return Allocation(it is not None, log, it)


def _trial(model: bytes, arena: int) -> tuple[bool, str | None, str]:
    """:func:`allocate` in a forked child (a crash is a failed trial): whether it ran, the
    operator TFLM has no kernel for, and the last line TFLM printed."""
    if not hasattr(os, "fork"):
        got = allocate(model, arena)
        return got.ok, got.missing_op, _last(got.log)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report and leave without running the parent's cleanup
        os.close(read_fd)
        try:
            got = allocate(model, arena)
            payload = [got.ok, got.missing_op, _last(got.log)]
        except BaseException as exc:
            payload = [False, None, f"{type(exc).__name__}: {exc}"]
        with os.fdopen(write_fd, "w") as fh:
            json.dump(payload, fh)
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as fh:
        data = fh.read()
    _, status = os.waitpid(pid, 0)
    if not data:
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        return False, None, f"TFLM crashed (signal {sig})"
    ok, missing, last = json.loads(data)
    return bool(ok), missing, last


def unsupported_op(model: bytes) -> str | None:
    """The first builtin operator TFLM's resolver has no kernel for, asked of TFLM itself (it
    stops at the first), or None when every operator resolves."""
    return _trial(model, _MAX_ARENA // 16)[1]


def minimal_arena(model: bytes) -> tuple[int, list[str]]:
    """The smallest arena (bytes) the model allocates and runs in, and the recording
    allocator's breakdown of it; ArtifactError when it does not run in any arena."""
    hi = max(len(model) * _FIRST_GUESS, 16 * 1024)
    while True:
        ok, missing, last = _trial(model, hi)
        if ok:
            break
        if missing:
            raise ArtifactError(f"TFLM has no kernel for {missing}")
        if hi >= _MAX_ARENA:
            raise ArtifactError(f"TFLM cannot run the model: {last}")
        hi *= 2
    lo = _FLOOR
    if _trial(model, lo)[0]:
        return lo, breakdown(model, lo)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _trial(model, mid)[0]:
            hi = mid
        else:
            lo = mid
    return hi, breakdown(model, hi)


def breakdown(model: bytes, arena: int) -> list[str]:
    """The recording allocator's report (print_allocations) after one inference."""
    got = allocate(model, arena)
    if not got.ok:
        return []
    with captured_fd2() as log:
        got.interpreter.print_allocations()
    return [m.group(1) for line in log if (m := _ALLOCATION.search(line))]


def _last(log: list[str]) -> str:
    lines = [x.strip() for x in log if x.strip()]
    return lines[-1][:300] if lines else "allocation failed"


def _io(detail: dict) -> IOSpec:
    q = detail.get("quantization_parameters") or {}
    scales, zps = q.get("scales", []), q.get("zero_points", [])
    scale = float(scales[0]) if len(scales) else None
    return IOSpec(
        [int(d) for d in detail["shape"]],
        np.dtype(detail["dtype"]).name,
        scale or None,
        int(zps[0]) if scale else None,
    )


class TflmSession:
    """An artifact under TFLM, opened in its own minimal arena (measured on opening)."""

    runtime = "tflite-micro"

    def __init__(self, path: Path, threads: int = 1, delegate: str = "none"):
        rt = _runtime_module()
        self.version = _version("tflite-micro", rt)
        self.delegate = "none"  # TFLM's reference kernels; no delegate exists
        model = path.read_bytes()
        missing = unsupported_op(model)
        if missing:
            raise ArtifactError(f"TFLM has no kernel for {missing} in {path.name}")
        self.arena_bytes, self.arena_breakdown = minimal_arena(model)
        got = allocate(model, self.arena_bytes)
        if not got.ok:
            raise ArtifactError(f"TFLM cannot load {path.name}: {_last(got.log)}")
        self._it = got.interpreter
        self.input = _io(self._it.get_input_details(0))
        self.output = _io(self._it.get_output_details(0))
        self.batchable = False

    def run(self, x: np.ndarray) -> np.ndarray:
        try:
            self._it.set_input(np.ascontiguousarray(x), 0)
            self._it.invoke()
            y = np.asarray(self._it.get_output(0))
        except (RuntimeError, ValueError) as exc:
            raise ArtifactError(f"TFLM invoke failed: {exc}") from None
        if self.output.scale:
            y = (y.astype(np.float32) - self.output.zero_point) * self.output.scale
        return y


@dataclass(frozen=True)
class Operator:
    """One operator of a .tflite model, as TFLM's resolver will look it up."""

    index: int
    op: str  # builtin operator name: CONV_2D, FULLY_CONNECTED, ...
    output: str  # name of its first output tensor (the writer names it after the ONNX node)
    float_io: bool  # reads or writes a float32 tensor


def model_operators(model: bytes) -> list[Operator]:
    """The operators of the model's main subgraph, read with the flatbuffer schema that ships
    with tflite-micro (so no other TFLite package is needed on the device)."""
    try:
        schema = importlib.import_module(
            "tflite_micro.tensorflow.lite.micro.python.schema_py_generated"
        )
    except ImportError:
        raise RuntimeUnavailable(
            "tflite-micro is not installed (pip install tflite-micro)"
        ) from None
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    try:
        root = schema.Model.GetRootAs(model, 0)
        graph = root.Subgraphs(0)
        codes = [root.OperatorCodes(i) for i in range(root.OperatorCodesLength())]
        ops = []
        for i in range(graph.OperatorsLength()):
            op = graph.Operators(i)
            code = codes[op.OpcodeIndex()]
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            tensors = [t for t in (*op.InputsAsNumpy(), *op.OutputsAsNumpy()) if t >= 0]
            float_io = any(
                graph.Tensors(int(t)).Type() == schema.TensorType.FLOAT32 for t in tensors
            )
            out = graph.Tensors(int(op.Outputs(0))).Name().decode() if op.OutputsLength() else ""
            ops.append(Operator(i, names.get(builtin, str(builtin)), out, float_io))
    except Exception as exc:  # a truncated or foreign flatbuffer fails anywhere in the walk
        raise ArtifactError(f"not a readable .tflite model ({type(exc).__name__}: {exc})") from None
    return ops


# Converters at the model's boundary: float in and out by design, and TFLM has them.
_BOUNDARY = {"QUANTIZE", "DEQUANTIZE"}


def float_operators(ops: list[Operator]) -> list[Operator]:
    """Operators computing in float (what the int8 search or the writer left unquantized); the
    QUANTIZE / DEQUANTIZE of a float32 model input or output are not counted."""
    return [o for o in ops if o.float_io and o.op not in _BOUNDARY]


def tflm_logits(model: bytes, batch: dict[str, np.ndarray], arena: int) -> np.ndarray:
    """Float logits of ``model`` under TFLM on every image of ``batch`` (``inputs`` float NCHW,
    optionally ``images`` uint8 NHWC), in an ``arena``-byte arena; ArtifactError when the model
    does not run in that arena (tried in a child first: a too-small arena may crash TFLM)."""
    from runtime_check.evaluate import _layout, _prepare, wants_raw_pixels

    ok, missing, last = _trial(model, arena)
    if not ok:
        why = f"TFLM has no kernel for {missing}" if missing else last
        raise ArtifactError(f"the model does not run in a {arena:,}-byte arena ({why})")
    it = allocate(model, arena).interpreter
    spec = _io(it.get_input_details(0))
    out = _io(it.get_output_details(0))
    inputs = batch["inputs"]
    if wants_raw_pixels(spec, batch):
        x = np.ascontiguousarray(batch["images"])
    else:
        x = _prepare(inputs, _layout(spec.shape, tuple(inputs.shape[1:]), None, "tflite"), spec)
    rows = []
    for i in range(len(x)):
        it.set_input(x[i : i + 1], 0)
        it.invoke()
        y = np.asarray(it.get_output(0)).astype(np.float32)
        rows.append((y - out.zero_point) * out.scale if out.scale else y)
    return np.concatenate(rows).reshape(len(x), -1)
