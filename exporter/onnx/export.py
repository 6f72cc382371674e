"""ONNX fp32 export from torch, and reading ONNX files with one-line errors."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
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

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


@contextlib.contextmanager
def _quiet_exporter():
    """torch.onnx's dynamo exporter talks a lot on stdout and in logging; keep it for errors."""
    loggers = [logging.getLogger(n) for n in ("torch", "torch.onnx", "onnxscript", "torch.export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
            warnings.simplefilter("ignore")
            yield sink
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


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


def export_onnx(
    module: nn.Module,
    input_shape: tuple[int, int, int],
    path: str | Path,
    *,
    opset: int = 18,
    force: bool = True,
) -> Path:
    """Export ``module`` (eval mode) to a single-file ONNX model with a dynamic batch axis.

    The dynamo exporter's optimiser folds BatchNorm into the preceding conv and drops Dropout;
    the result is checked with ``onnx.checker`` and shape inference before it is renamed into place.
    """
    module = set_mode(module, training=False)
    example = torch.zeros(1, *input_shape)
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                module,
                (example,),
                dynamo=True,
                external_data=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                verbose=False,
            )
            model = program.model_proto
    except Exception as exc:  # the exporter raises many types; the user needs one line
        if (interrupt := _interrupt(exc)) is not None:
            raise interrupt from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConversionError(f"torch.onnx.export failed: {first}") from None
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    with atomic_path(path, force=force) as tmp:
        onnx.save_model(model, str(tmp))
    return Path(path)


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
