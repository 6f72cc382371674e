"""Adapters over the inference runtimes: onnxruntime, ai-edge-litert, tflite_runtime, and
TensorFlow Lite Micro (``runtime_check.tflm``).

Each is imported lazily and optionally: an artifact whose runtime is missing is reported as
skipped with what to install. Only numpy and the runtime itself are imported here.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime_check.coverage import ops_outside_delegate


class RuntimeUnavailable(Exception):
    """The runtime needed for an artifact is not installed here."""


class ArtifactError(Exception):
    """The artifact does not load, or does not accept the eval batch."""


@dataclass
class IOSpec:
    shape: list[int]
    dtype: str
    scale: float | None = None
    zero_point: int | None = None


def _version(dist: str, module) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return getattr(module, "__version__", "unknown")


class OrtSession:
    runtime = "onnxruntime"

    def __init__(self, path: Path, threads: int, delegate: str):
        try:
            ort = importlib.import_module("onnxruntime")
        except ImportError:
            raise RuntimeUnavailable(
                "onnxruntime is not installed (pip install onnxruntime)"
            ) from None
        self.version = _version("onnxruntime", ort)
        self.delegate = "cpu"
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        try:
            self._sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception classes per failure
            raise ArtifactError(
                f"onnxruntime cannot load {path.name}: {_first_line(exc)}"
            ) from None
        inp = self._sess.get_inputs()[0]
        self._name = inp.name
        self._out = self._sess.get_outputs()[0].name
        dims = [d if isinstance(d, int) else -1 for d in inp.shape]
        self.input = IOSpec(dims, _ORT_TYPES.get(inp.type, inp.type))
        self.batchable = bool(dims) and dims[0] != 1

    def run(self, x: np.ndarray) -> np.ndarray:
        try:
            return self._sess.run([self._out], {self._name: x})[0]
        except Exception as exc:
            raise ArtifactError(f"onnxruntime run failed: {_first_line(exc)}") from None


_ORT_TYPES = {"tensor(float)": "float32", "tensor(uint8)": "uint8", "tensor(int8)": "int8"}


def _tflite_interpreter_module():
    """ai-edge-litert (maintained), else tflite_runtime (what many Raspberry Pis have)."""
    for module, dist in (
        ("ai_edge_litert.interpreter", "ai-edge-litert"),
        ("tflite_runtime.interpreter", "tflite-runtime"),
    ):
        try:
            return importlib.import_module(module), dist
        except ImportError:
            continue
    raise RuntimeUnavailable(
        "no TFLite runtime (pip install ai-edge-litert, or tflite-runtime "
        "with numpy<2 on older systems)"
    )


class TfliteSession:
    def __init__(self, path: Path, threads: int, delegate: str):
        mod, dist = _tflite_interpreter_module()
        self.runtime = dist
        self.version = _version(dist, mod)
        self.delegate = delegate
        kwargs = {"num_threads": threads}
        if delegate == "none":
            kwargs["experimental_op_resolver_type"] = (
                mod.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
            )
        try:
            self._it = mod.Interpreter(model_path=str(path), **kwargs)
            self._it.allocate_tensors()
        except Exception as exc:
            raise ArtifactError(f"{dist} cannot load {path.name}: {_first_line(exc)}") from None
        # Measured, not predicted: which ops XNNPACK left to LiteRT's own kernels.
        self.ops_outside_delegate = (
            ops_outside_delegate(self._it) if delegate == "xnnpack" else None
        )
        inp = self._it.get_input_details()[0]
        out = self._it.get_output_details()[0]
        self._in_idx, self._out_idx = inp["index"], out["index"]
        self.input = _tflite_io(inp)
        self.output = _tflite_io(out)
        self.batchable = False

    def run(self, x: np.ndarray) -> np.ndarray:
        try:
            self._it.set_tensor(self._in_idx, x)
            self._it.invoke()
            y = self._it.get_tensor(self._out_idx)
        except Exception as exc:
            raise ArtifactError(f"LiteRT invoke failed: {_first_line(exc)}") from None
        if self.output.scale:
            y = (y.astype(np.float32) - self.output.zero_point) * self.output.scale
        return y


def _tflite_io(detail: dict) -> IOSpec:
    scale, zp = detail.get("quantization", (0.0, 0))
    return IOSpec(
        [int(d) for d in detail["shape"]],
        np.dtype(detail["dtype"]).name,
        float(scale) or None,
        int(zp) if scale else None,
    )


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def open_session(path: Path, threads: int, delegate: str, runtime: str | None = None):
    """The session for an artifact, chosen by its file suffix (``runtime="tflm"``: a .tflite
    under TensorFlow Lite Micro instead of LiteRT)."""
    if runtime == "tflm":
        if path.suffix != ".tflite":
            raise ArtifactError(f"{path.name}: TFLM runs .tflite models only")
        from runtime_check.tflm import TflmSession

        return TflmSession(path, threads, delegate)
    if path.suffix == ".onnx":
        return OrtSession(path, threads, delegate)
    if path.suffix == ".tflite":
        return TfliteSession(path, threads, delegate)
    raise ArtifactError(f"{path.name}: unknown artifact type (expected .onnx or .tflite)")


def runtime_versions() -> dict[str, str]:
    """Versions of whichever runtimes are importable here."""
    found = {}
    for module, dist in (
        ("onnxruntime", "onnxruntime"),
        ("ai_edge_litert", "ai-edge-litert"),
        ("tflite_runtime", "tflite-runtime"),
        ("tflite_micro", "tflite-micro"),
    ):
        try:
            found[dist] = _version(dist, importlib.import_module(module))
        except ImportError:
            continue
    return found
