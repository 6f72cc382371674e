"""What the exporter knows about each artifact it wrote (runtime_check measures the rest).

The list is saved as ``artifacts.json`` (exporter.outdir.ARTIFACT_INDEX) beside the artifacts
so that `edgepack check` can validate an output directory again, on another target, without
the torch model. Every fact is a typed field; report.json carries them in the artifact's row
under their own names (``tflite``, ``int8``, ``tensors``), apart from what was measured.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from exporter.common.typed_json import TypedJsonError, doc, from_json, to_json
from exporter.errors import InputFileError
from exporter.outdir import ARTIFACT_INDEX


@dataclass
class TfliteFacts:
    """What the TFLite writer emitted."""

    op_counts: dict[str, int] = doc("TFLite builtin operator -> how many the model has")
    transpose_count: int = doc("TRANSPOSE operators left in the graph (0: layout fully NHWC)")
    input_layout: str = doc("layout of the model input as written: `nhwc` or `nchw`")
    io_dtype: str = doc("dtype of the model's input and output tensors: `float32`, `int8`, `uint8`")
    float_fallback_ops: list[str] = doc("int8 models: operators the writer left in float")
    conversion_s: float | None = doc(
        "ONNX -> TFLite conversion time, seconds; null in artifacts.json and check reports "
        "(wall time of the run, not a fact about the file)",
        default=None,
    )
    storage_delegate: str | None = doc(
        "sparse storage only: the delegate (`runtime.delegate` at export) each weight's "
        "encoding was chosen for; what ran is the row's measured `delegate`",
        default=None,
    )


@dataclass
class Int8Facts:
    """How an int8 artifact was quantized."""

    calibration: str = doc(
        "calibration method of the activation ranges: minmax, percentile, entropy"
    )
    reduce_range: bool = doc("weights use 7 bits (x86 without VNNI, ONNX only)")
    float_layers: list[str] = doc("ONNX nodes left in float by the accuracy search")
    qdq_source: str | None = doc(
        "TFLite only: the QDQ ONNX file it was converted from (model.int8.onnx, or "
        "model.int8.portable.onnx when model.int8.onnx has 7-bit weights)",
        default=None,
    )


@dataclass
class StoredTensor:
    """How one constant weight is stored in a sparse-stored artifact."""

    name: str = doc("tensor name")
    shape: list[int] = doc("tensor shape")
    dtype: str = doc("element type")
    sparsity: float = doc("fraction of zero elements")
    encoding: str = doc("`dense`, `coo` (ONNX); `dense`, `csr`, `block1x4`, `block1x16` (TFLite)")
    dense_bytes: int = doc("bytes stored densely")
    stored_bytes: int = doc("bytes as stored")
    via: str | None = doc(
        "TFLite: `-` (dense), `direct` (the kernel reads it) or `densify` (a DENSIFY op)",
        default=None,
    )
    index_type: str | None = doc("TFLite: index element type, `-` for dense", default=None)
    consumer: str | None = doc("TFLite: the operator that reads the weight", default=None)


@dataclass
class Artifact:
    """One file the exporter wrote and reports on."""

    path: str = doc("file name inside the output directory")
    format: Literal["onnx", "tflite"] = doc("artifact format")
    precision: str = doc("`fp32`, `fp16`, `dynamic`, `int8` or `int16x8`")
    storage: str = doc("`dense` or `sparse` (sparse weight storage, kept only where smaller)")
    tflite: TfliteFacts | None = doc("TFLite artifacts: what the writer emitted", default=None)
    int8: Int8Facts | None = doc("int8 artifacts: how they were quantized", default=None)
    tensors: list[StoredTensor] | None = doc(
        "sparse storage: one row per weight, how it is stored", default=None
    )
    sha256: str | None = doc(
        "SHA-256 of the file as written (hex); every reader of the output directory refuses a "
        "file that no longer matches. Null only before the index is saved",
        default=None,
    )
    bytes: int | None = doc("file size as written", default=None)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_artifact(out_dir: Path, art: Artifact) -> None:
    """Refuse (one-line InputFileError naming the file) an artifact of ``out_dir`` that is not
    the file `edgepack run` wrote and validated: missing, another size or another SHA-256."""
    if Path(art.path).name != art.path or art.path in ("", ".", ".."):
        raise InputFileError(f"{out_dir / ARTIFACT_INDEX}: {art.path!r} is not a file name")
    path = out_dir / art.path
    if art.sha256 is None or art.bytes is None:
        raise InputFileError(
            f"{out_dir / ARTIFACT_INDEX} has no sha256 for {art.path} (written by an older "
            "edgepack): its files cannot be verified; re-run `edgepack run`"
        )
    if not path.is_file():
        raise InputFileError(f"{path} is missing (listed in {ARTIFACT_INDEX})")
    size = path.stat().st_size
    if size != art.bytes or file_sha256(path) != art.sha256:
        raise InputFileError(
            f"{path} differs from {ARTIFACT_INDEX} (sha256 or size: {size:,} bytes, "
            f"{art.bytes:,} recorded): it was changed after `edgepack run`; re-run it"
        )


def _index_row(art: Artifact) -> dict:
    row = to_json(art)
    # The conversion time is this run's wall time: it stays in report.json, not in the index,
    # which describes only the files, so that the same inputs write a byte-identical index.
    if row["tflite"] is not None:
        row["tflite"]["conversion_s"] = None
    return row


def save_index(artifacts: list[Artifact], out_dir: Path) -> None:
    """Write artifacts.json, recording (on each Artifact too) every file's size and SHA-256."""
    for art in artifacts:
        path = out_dir / art.path
        art.bytes, art.sha256 = path.stat().st_size, file_sha256(path)
    rows = [_index_row(a) for a in artifacts]
    (out_dir / ARTIFACT_INDEX).write_text(json.dumps(rows, indent=2) + "\n")


def load_index(out_dir: Path, *, verify: bool = True) -> list[Artifact]:
    """artifacts.json, typed; with ``verify``, every file checked against it
    (:func:`verify_artifact`), so what is read is what was validated."""
    path = out_dir / ARTIFACT_INDEX
    if not path.is_file():
        raise InputFileError(f"{out_dir} is not an edgepack output directory (no {ARTIFACT_INDEX})")
    try:
        rows = json.loads(path.read_text())
        if not isinstance(rows, list):
            raise TypedJsonError("not a list")
        arts = [from_json(Artifact, row, f"{ARTIFACT_INDEX}[{i}]") for i, row in enumerate(rows)]
    except (ValueError, TypeError) as exc:
        raise InputFileError(f"{path}: unreadable ({exc})") from None
    if verify:
        for art in arts:
            verify_artifact(out_dir, art)
    return arts
