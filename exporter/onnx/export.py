"""ONNX fp32 export from torch, and reading ONNX files with one-line errors."""

from __future__ import annotations

import contextlib
import io
import logging
import re
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from google.protobuf.message import DecodeError
from onnx import numpy_helper
from torch import nn

from exporter.common.atomic import atomic_path
from exporter.errors import ConversionError, InputFileError
from exporter.models.loading import set_mode
from exporter.onnx import cache

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


@contextlib.contextmanager
def _quiet_exporter():
    """torch.onnx's dynamo exporter talks a lot on stdout and in logging (a failed dynamic-shape
    guard logs ~150 lines at ERROR); the failure is reported in one line instead. (stderr is
    left alone: the progress display draws there.)"""
    disabled = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
            warnings.simplefilter("ignore")
            yield sink
    finally:
        logging.disable(disabled)


def _interrupt(exc: BaseException | None) -> KeyboardInterrupt | None:
    """The Ctrl-C (or SIGTERM) behind ``exc``, if any: an exporter that wraps the errors of its
    stages in its own types must not turn an interrupt into a failed export."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def first_cause(exc: BaseException) -> str:
    """The first line of the innermost exception behind ``exc`` that says something.

    torch.onnx wraps the real failure ("Constraints violated (batch)!") in a TorchExportError
    whose own message is a page of generic advice ending at "Next steps:".
    """
    chain, seen = [], set()
    while exc is not None and id(exc) not in seen:
        chain.append(exc)
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    for cause in reversed(chain):
        text = _ANSI.sub("", str(cause)).strip()
        if text:
            line = text.splitlines()[0].strip()
            return line.split(" For more information", 1)[0]
    return type(chain[-1]).__name__


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx_info` wrote and how (recorded in the report)."""

    path: Path
    exporter: str  # "dynamo" | "torchscript"
    dynamic_batch: bool  # False: the file takes a batch of exactly 1
    seconds: float
    fallback_reason: str | None = None  # the first cause of the dynamo/dynamic-batch failure
    cached: bool = False  # the graph of an earlier export of the same model (exporter.onnx.cache)


def _dynamo(module: nn.Module, example: torch.Tensor, opset: int, dynamic: bool):
    program = torch.onnx.export(
        module,
        (example,),
        dynamo=True,
        external_data=False,
        opset_version=opset,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=({0: torch.export.Dim("batch")},) if dynamic else None,
        verbose=False,
    )
    return program.model_proto


def _torchscript(module: nn.Module, example: torch.Tensor, opset: int, dynamic: bool):
    buffer = io.BytesIO()
    torch.onnx.export(
        module,
        (example,),
        buffer,
        dynamo=False,
        opset_version=opset,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic else None,
    )
    return onnx.load_model_from_string(buffer.getvalue())


# Tried in order until one succeeds: the dynamo exporter with a dynamic batch, then with a
# static batch of 1 (a model whose code guards on the batch size, e.g. convnext's
# "Constraints violated (batch)"), then the TorchScript exporter (dynamo=False).
_PATHS = (
    ("dynamo", True, _dynamo),
    ("dynamo", False, _dynamo),
    ("torchscript", True, _torchscript),
)


_torchlib = {"lock": threading.Lock(), "ops": None}


def _memoized_torchlib_ops(original):
    """torch.onnx builds its op registry from onnxscript's torchlib on every export, and
    onnxscript re-parses the Python source of ~500 functions for it (1.5-3.5 s here); the list
    is the same for the whole process, so it is built once (the registry itself stays fresh)."""

    def ops():
        with _torchlib["lock"]:
            if _torchlib["ops"] is None:
                _torchlib["ops"] = original()
            return _torchlib["ops"]

    ops.edgepack_memoized = True
    return ops


def _torchlib_apis():
    """torch.onnx's handle on onnxscript's API module, its ``get_torchlib_ops`` memoized; None
    where this torch has no such handle (the export then runs as torch wrote it)."""
    try:
        from torch.onnx._internal.exporter import _registration
    except ImportError:
        return None
    apis = getattr(_registration, "onnxscript_apis", None)
    original = getattr(apis, "get_torchlib_ops", None)
    if original is None:
        return None
    if not getattr(original, "edgepack_memoized", False):
        apis.get_torchlib_ops = _memoized_torchlib_ops(original)
    return apis


def export_onnx_info(
    module: nn.Module,
    input_shape: tuple[int, int, int],
    path: str | Path,
    *,
    opset: int = 18,
    force: bool = True,
) -> OnnxExport:
    """Export ``module`` (eval mode) to a single-file ONNX model, with a dynamic batch axis
    where the model allows one; returns which exporter wrote it.

    The dynamo exporter's optimiser folds BatchNorm into the preceding conv and drops Dropout.
    Each path's graph must compute the module on random images (:func:`_check_export`), else
    the next path is tried (:data:`_PATHS`); when every path fails, one line gives each path's
    first cause. The result is checked with ``onnx.checker`` and shape inference before it is
    renamed into place, and kept in :mod:`exporter.onnx.cache` for the next export of the same
    code and weights.
    """
    module = set_mode(module, training=False)
    example = torch.zeros(1, *input_shape)
    start = time.perf_counter()
    key = _cache_key(module, input_shape, opset)
    if key is not None and (hit := _cached(key, module, input_shape)) is not None:
        model, meta = hit
        with atomic_path(path, force=force) as tmp:
            onnx.save_model(model, str(tmp))
        return OnnxExport(
            Path(path),
            meta["exporter"],
            _dynamic_batch(model),
            time.perf_counter() - start,
            meta.get("fallback_reason"),
            cached=True,
        )
    _torchlib_apis()
    failures: list[str] = []
    model = None
    for name, dynamic, export in _PATHS:
        try:
            with _quiet_exporter():
                candidate = export(module, example, opset, dynamic)
                _check_export(module, candidate, input_shape)
            model = candidate
            break
        except NonFiniteExport:
            raise
        except Exception as exc:  # the exporter raises many types; the user needs one line
            if (interrupt := _interrupt(exc)) is not None:
                raise interrupt from None
            how = f"{name}, {'dynamic batch' if dynamic else 'batch 1'}"
            failures.append(f"{how}: {first_cause(exc)}")
    if model is None:
        raise ConversionError(f"torch.onnx.export failed ({'; '.join(failures)})")
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    with atomic_path(path, force=force) as tmp:
        onnx.save_model(model, str(tmp))
    reason = failures[0].split(": ", 1)[1] if failures else None
    if key is not None:
        cache.store(key, model.SerializeToString(), {"exporter": name, "fallback_reason": reason})
    return OnnxExport(
        Path(path),
        name,
        _dynamic_batch(model),  # dynamo may specialise the batch to 1 without failing
        time.perf_counter() - start,
        reason,
    )


class NonFiniteExport(ConversionError):
    """The graph computes NaN/Inf from finite images: a property of the model's numbers, which
    no other export path changes."""


@torch.no_grad()
def _check_export(module: nn.Module, model: onnx.ModelProto, input_shape: tuple) -> None:
    """The exported graph must compute the model, one image at a time and (dynamic batch) on a
    batch of three; else the export is refused and the next path tried.

    Both exporters can freeze a Python decision into the graph without error: torch.onnx's
    dynamo path may keep a branch on the example's batch size (``x[:2] if x.shape[0] <= 2``),
    and the TorchScript exporter traces one run, freezing any control flow on tensor values."""
    x = torch.randn(3, *input_shape, generator=torch.Generator().manual_seed(0))
    sess = onnx_session(model.SerializeToString())
    name = sess.get_inputs()[0].name
    # Two forwards (a cold forward of a large model costs seconds): one image, then a batch of
    # three or, for a batch-1 graph, another image.
    for feed in (x[:1], x if _dynamic_batch(model) else x[1:2]):
        got = sess.run(None, {name: feed.numpy()})[0]
        want = module(feed).numpy()
        if not np.isfinite(want).all():  # random images the model cannot take: no judgement
            continue
        if got.shape == want.shape and not np.isfinite(got).all():
            raise NonFiniteExport(
                "the model's activations are not finite on random images: the exported graph "
                "gives NaN/Inf where torch's outputs are finite (an intermediate likely overflows "
                "float32, so int8 calibration and every runtime would see it); scale the "
                "activations down"
            )
        diff = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
        if not diff <= 1e-4 * (float(np.ptp(want)) or 1.0):
            raise ConversionError(
                f"the exported graph does not compute the model on batch {len(feed)} "
                f"(max |diff| {diff:.3g} on random images): its forward decides on tensor "
                "sizes or values in Python"
            )


def _dynamic_batch(model: onnx.ModelProto) -> bool:
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    return not dim.HasField("dim_value")


def _cache_key(module: nn.Module, input_shape: tuple, opset: int) -> str | None:
    if cache.cache_dir() is None:
        return None
    try:
        return cache.export_key(module, input_shape, opset)
    except Exception:  # a module the key cannot describe is exported every time
        return None


def _cached(key: str, module: nn.Module, input_shape: tuple) -> tuple | None:
    """The cached graph of ``key`` if it still computes ``module`` (see exporter.onnx.cache)."""
    hit = cache.lookup(key)
    if hit is None:
        return None
    data, meta = hit
    try:
        model = onnx.load_model_from_string(data)
        with _quiet_exporter():
            _check_export(module, model, input_shape)
    except Exception:  # stale or unreadable: export afresh
        return None
    return (model, meta) if "exporter" in meta else None


def export_onnx(
    module: nn.Module,
    input_shape: tuple[int, int, int],
    path: str | Path,
    *,
    opset: int = 18,
    force: bool = True,
) -> Path:
    """:func:`export_onnx_info`, returning the path."""
    return export_onnx_info(module, input_shape, path, opset=opset, force=force).path


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """Load and check an ONNX file; a missing, truncated or invalid file is an InputFileError."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"ONNX file {path} not found")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise InputFileError(f"{path}: not a valid ONNX model ({type(exc).__name__})") from None
    if not model.graph.node:
        raise InputFileError(f"{path}: not a valid ONNX model (no graph nodes)")
    if _check_external_data(path, model):
        onnx.load_external_data_for_model(model, str(path.parent))
    try:
        onnx.checker.check_model(model)
    # A corrupt string field (a name that is not UTF-8) fails in the checker's decoding step
    # as UnicodeDecodeError, a ValueError, before any validation rule runs.
    except (onnx.checker.ValidationError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise InputFileError(f"{path}: invalid ONNX model ({first})") from None
    return model


def _check_external_data(path: Path, model: onnx.ModelProto) -> bool:
    """Whether ``model`` has external data; each file must exist inside the model's folder.

    A location such as ``../../etc/shadow`` or an absolute path would make edgepack read (and
    copy into its output) a file the model has no business with, so it is refused.
    """
    folder = path.parent.resolve()
    external = False
    for init in model.graph.initializer:
        if init.data_location != onnx.TensorProto.EXTERNAL:
            continue
        external = True
        loc = {e.key: e.value for e in init.external_data}.get("location", "?")
        if not (folder / loc).resolve().is_relative_to(folder):
            raise InputFileError(
                f"{path}: external data '{loc}' for tensor '{init.name}' is outside the "
                "model's folder; refused (external data must sit beside the model)"
            )
        if not (folder / loc).is_file():
            raise InputFileError(
                f"{path}: external data file '{loc}' for tensor '{init.name}' is missing"
            )
    return external


def copy_onnx(src: str | Path, dest: str | Path) -> None:
    """Copy an ONNX model to ``dest`` as one self-contained file.

    A model whose weights are in external data files is saved with the data inside, so the
    copy does not depend on files left behind (a byte copy of the .onnx alone would).
    """
    src, dest = Path(src), Path(dest)
    model = load_onnx(src)
    raw = src.read_bytes()
    bare = onnx.load_model_from_string(raw)  # external data is not loaded from a string
    if any(i.data_location == onnx.TensorProto.EXTERNAL for i in bare.graph.initializer):
        onnx.save_model(model, str(dest))  # load_onnx has read the data in
    else:
        dest.write_bytes(raw)  # self-contained already: keep the user's bytes


def onnx_input_shape(model: onnx.ModelProto) -> tuple[list[int | str], str]:
    """The first graph input's shape (symbolic dims as strings) and name."""
    init_names = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in init_names]
    if not inputs:
        raise InputFileError("ONNX model has no graph input")
    dims = []
    for d in inputs[0].type.tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?"))
    return dims, inputs[0].name


def describe_onnx(path: str | Path) -> dict:
    """Ops, parameters, per-tensor sparsity and bytes of an ONNX model (for `edgepack inspect`)."""
    path = Path(path)
    model = load_onnx(path)
    ops: dict[str, int] = {}
    for node in model.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    tensors = []
    params = zeros = 0
    for init in model.graph.initializer:
        arr = numpy_helper.to_array(init)
        nz = int(np.count_nonzero(arr == 0))
        params += arr.size
        zeros += nz
        tensors.append(
            {
                "name": init.name,
                "shape": list(arr.shape),
                "dtype": str(arr.dtype),
                "bytes": int(arr.nbytes),
                "sparsity": nz / max(1, arr.size),
            }
        )
    for sp in model.graph.sparse_initializer:
        dense = numpy_helper.to_array(sp.values)
        size = int(np.prod(list(sp.dims)))
        params += size
        zeros += size - dense.size
        tensors.append(
            {
                "name": sp.values.name,
                "shape": list(sp.dims),
                "dtype": str(dense.dtype),
                "bytes": int(dense.nbytes),
                "sparsity": 1 - dense.size / max(1, size),
                "storage": "sparse",
            }
        )
    shape, name = onnx_input_shape(model)
    return {
        "path": str(path),
        "format": "onnx",
        "bytes": path.stat().st_size,
        "opset": max(
            (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None
        ),
        "input": {"name": name, "shape": shape},
        "outputs": [o.name for o in model.graph.output],
        "ops": ops,
        "params": params,
        "zeros": zeros,
        "sparsity": zeros / max(1, params),
        "tensors": tensors,
    }


def onnx_session(model: str | Path | bytes, *, optimize: bool = True):
    """A quiet CPU onnxruntime session (host side; runtime_check has its own)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if not optimize:  # keeps intermediate tensors that graph fusions would remove
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def run_batched(sess, x: np.ndarray, chunk: int = 256) -> list[np.ndarray]:
    """All outputs of ``sess`` on ``x``, in chunks; one image at a time for a fixed batch of 1."""
    inp = sess.get_inputs()[0]
    step = 1 if inp.shape and inp.shape[0] == 1 else chunk
    parts = [sess.run(None, {inp.name: x[i : i + step]}) for i in range(0, len(x), step)]
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]


def onnx_logits(model: str | Path | bytes, x: np.ndarray) -> np.ndarray:
    """The first output of an ONNX model on ``x``."""
    return run_batched(onnx_session(model), x)[0]
