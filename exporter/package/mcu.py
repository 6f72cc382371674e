"""``edgepack package DIR --platform mcu``: firmware-ready C++ sources for TensorFlow Lite Micro.

The package holds the int8 model a TFLM target validated, as sources a firmware build compiles:

- ``model_data.cc`` / ``model_data.h``: the .tflite bytes as a 16-byte aligned ``const unsigned
  char`` array (it stays in flash) with its length, the tensor arena size, the input and output
  quantization and the class labels;
- ``model_ops.h``: ``RegisterModelOps()`` filling a ``tflite::MicroMutableOpResolver<N>`` with
  exactly the operators the model uses (every other kernel stays out of the firmware);
- ``labels.txt``, ``sample_inputs.npz`` and ``manifest.json`` (sha256 and size of every file,
  the measured figures, and the model's TFLM answers on the samples for ``--verify``).

``--verify`` reads the array back out of ``model_data.cc`` (not the .tflite), checks it against
the manifest and runs it under TFLM in the packaged arena size.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from exporter import __version__
from exporter.common.atomic import atomic_dir, atomic_path, check_writable
from exporter.errors import PackageError
from exporter.outdir import PACKAGE_MANIFEST, package_path, package_zip
from exporter.package.verify import LABELS, SAMPLES, _read_checked, load_samples
from exporter.package.zipfile_det import ZipLimits, check_entries, read_entry, zip_bytes

PLATFORM = "mcu"
MODEL_CC = "model_data.cc"
MODEL_H = "model_data.h"
OPS_H = "model_ops.h"
MCU_MANIFEST_VERSION = 1
# The arena was measured with TFLM's reference kernels; the boards' optimized kernels (CMSIS-NN
# on Cortex-M, ESP-NN on the ESP32-S3) ask for scratch buffers of their own (im2col, per-channel
# multipliers), so the packaged size adds a quarter and rounds up to a whole KiB.
ARENA_MARGIN = 0.25
ARENA_ROUND = 1024
# TFLM reads the flatbuffer in place: 16-byte alignment is what its examples and allocator use.
ALIGNMENT = 16
_BYTES_PER_LINE = 12

# MicroMutableOpResolver's Add* method of a builtin operator is its name in CamelCase
# (CONV_2D -> AddConv2D, BATCH_TO_SPACE_ND -> AddBatchToSpaceNd) except for these.
_ADD_EXCEPTIONS = {
    "PADV2": "PadV2",
    "CUMSUM": "CumSum",
    "BATCH_MATMUL": "BatchMatMul",
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "UnidirectionalSequenceLSTM",
}


def resolver_method(op: str) -> str:
    """The ``MicroMutableOpResolver`` method that registers builtin ``op``."""
    if op in _ADD_EXCEPTIONS:
        return "Add" + _ADD_EXCEPTIONS[op]
    parts = [p.upper() if p[:1].isdigit() else p.capitalize() for p in op.split("_")]
    return "Add" + "".join(parts)


def arena_constant(measured: int) -> int:
    return math.ceil(measured * (1 + ARENA_MARGIN) / ARENA_ROUND) * ARENA_ROUND


def _c_string(text: str) -> str:
    """A C string literal; every byte outside plain ASCII letters, digits and a few marks as a
    3-digit octal escape (never greedy, unlike \\x)."""
    safe = set(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _-.,:;()+/")
    return '"' + "".join(chr(b) if b in safe else f"\\{b:03o}" for b in text.encode()) + '"'


def _c_float(value: float | None) -> str:
    return "0.0f" if value is None else f"{float(np.float32(value))!r}f"


def model_data_cc(model: bytes, classes: list[str], header: str) -> str:
    rows = [
        "  " + ", ".join(f"0x{b:02x}" for b in model[i : i + _BYTES_PER_LINE]) + ","
        for i in range(0, len(model), _BYTES_PER_LINE)
    ]
    labels = "\n".join(f"    {_c_string(c)}," for c in classes)
    return (
        f"{header}\n"
        f'#include "{MODEL_H}"\n\n'
        "// In flash: const data is not copied to RAM; TFLM reads the flatbuffer in place.\n"
        f"alignas({ALIGNMENT}) const unsigned char g_model_data[] = {{\n"
        + "\n".join(rows)
        + "\n};\n"
        f"const unsigned int g_model_data_len = {len(model)};\n\n"
        f"const char* const g_model_labels[kModelClassCount] = {{\n{labels}\n}};\n"
    )


def model_data_h(spec: dict[str, Any], header: str) -> str:
    inp, out = spec["input"], spec["output"]
    shape = inp["shape"]
    return (
        f"{header}\n"
        "#ifndef EDGEPACK_MODEL_DATA_H_\n#define EDGEPACK_MODEL_DATA_H_\n\n"
        f"// The .tflite model ({spec['bytes']:,} bytes, sha256 {spec['sha256']}).\n"
        "extern const unsigned char g_model_data[];\n"
        "extern const unsigned int g_model_data_len;\n\n"
        f"// The smallest arena TFLM ran the model in was {spec['arena_measured']:,} bytes "
        "(reference kernels,\n"
        f"// on the host); {int(ARENA_MARGIN * 100)} % more for optimized kernels' scratch "
        f"buffers, rounded up to {ARENA_ROUND} bytes.\n"
        f"// Declare it alignas({ALIGNMENT}).\n"
        f"constexpr unsigned int kTensorArenaSize = {spec['arena_bytes']};\n\n"
        f"// Input {inp['dtype']} {shape} ({inp['layout']}); "
        "q = round(x / scale) + zero_point, x = (pixel / 255 - mean) / std.\n"
        f"constexpr float kInputMean[] = {{{', '.join(_c_float(v) for v in inp['mean'])}}};\n"
        f"constexpr float kInputStd[] = {{{', '.join(_c_float(v) for v in inp['std'])}}};\n"
        f"constexpr float kInputScale = {_c_float(inp['scale'])};\n"
        f"constexpr int kInputZeroPoint = {inp['zero_point'] or 0};\n"
        f"// Output {out['dtype']} {out['shape']} logits; x = (q - zero_point) * scale.\n"
        f"constexpr float kOutputScale = {_c_float(out['scale'])};\n"
        f"constexpr int kOutputZeroPoint = {out['zero_point'] or 0};\n\n"
        f"constexpr int kModelClassCount = {len(spec['classes'])};\n"
        "extern const char* const g_model_labels[kModelClassCount];\n\n"
        "#endif  // EDGEPACK_MODEL_DATA_H_\n"
    )


def model_ops_h(ops: list[str], header: str) -> str:
    adds = "\n".join(
        f"  if (resolver.{resolver_method(op)}() != kTfLiteOk) return kTfLiteError;" for op in ops
    )
    return (
        f"{header}\n"
        "#ifndef EDGEPACK_MODEL_OPS_H_\n#define EDGEPACK_MODEL_OPS_H_\n\n"
        '#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"\n\n'
        f"// The {len(ops)} builtin operators of the model, and no others: "
        "the linker drops every other kernel.\n"
        f"constexpr unsigned int kModelOpCount = {len(ops)};\n"
        "using ModelOpResolver = tflite::MicroMutableOpResolver<kModelOpCount>;\n\n"
        "inline TfLiteStatus RegisterModelOps(ModelOpResolver& resolver) {\n"
        f"{adds}\n"
        "  return kTfLiteOk;\n}\n\n"
        "#endif  // EDGEPACK_MODEL_OPS_H_\n"
    )


_ARRAY = re.compile(r"g_model_data\[\]\s*=\s*\{([^}]*)\}", re.S)
_LEN = re.compile(r"g_model_data_len\s*=\s*(\d+)\s*;")
_ARENA = re.compile(r"kTensorArenaSize\s*=\s*(\d+)\s*;")


def array_bytes(source: str) -> bytes:
    """The bytes of ``g_model_data`` as written in a model_data.cc, checked against its
    ``g_model_data_len``."""
    m, n = _ARRAY.search(source), _LEN.search(source)
    if m is None or n is None:
        raise PackageError(f"{MODEL_CC} has no g_model_data array with its length")
    try:
        data = bytes(int(tok, 16) for tok in m.group(1).replace(",", " ").split())
    except ValueError as exc:
        raise PackageError(f"{MODEL_CC}: g_model_data holds a non-byte value ({exc})") from None
    if len(data) != int(n.group(1)):
        raise PackageError(
            f"{MODEL_CC}: g_model_data holds {len(data)} bytes, g_model_data_len says {n.group(1)}"
        )
    return data


# ----- building -------------------------------------------------------------------------------


def _choose(out_dir: Path, allow_failed: bool, artifacts: tuple[str, ...]):
    from exporter.package import (
        _check_verdict,
        _inputs_of,
        _load_report,
        _split_artifacts,
        _verify_files,
        choose_tflite,
    )

    report = _load_report(out_dir)
    classes, norm = _inputs_of(report, out_dir)
    named = _split_artifacts(artifacts)
    if "onnx" in named:
        raise PackageError(f"--artifact {named['onnx']}: an mcu package ships one .tflite model")
    _check_verdict(report, out_dir, allow_failed, named)
    row = choose_tflite(report, out_dir, allow_failed, named.get("tflite"))
    if report.get("target", {}).get("device") != "tflm" or row.get("arena_bytes") is None:
        raise PackageError(
            f"{row['path']} was not validated under TensorFlow Lite Micro: run it with an MCU "
            "target (edgepack run ... --target nano33ble) before --platform mcu"
        )
    _verify_files(out_dir, [row["path"]])
    return report, classes, norm, row


def _header(report: dict, row: dict) -> str:
    target = report.get("target", {}).get("name")
    return (
        f"// Generated by edgepack {__version__} from {row['path']}, validated under TensorFlow "
        f"Lite Micro\n// for target '{target}'. Do not edit: re-run `edgepack package "
        "--platform mcu`."
    )


def _spec(model: bytes, row: dict, classes: list[str], norm: dict) -> dict[str, Any]:
    from runtime_check.tflm import _io, allocate, model_operators

    measured = int(row["arena_bytes"])
    arena = arena_constant(measured)
    got = allocate(model, arena)
    if not got.ok:
        raise PackageError(f"{row['path']} does not run under TFLM in {arena:,} bytes")
    inp, out = got.interpreter.get_input_details(0), got.interpreter.get_output_details(0)
    io_in, io_out = _io(inp), _io(out)
    ops = sorted({o.op for o in model_operators(model)})
    return {
        "source": row["path"],
        "sha256": hashlib.sha256(model).hexdigest(),
        "bytes": len(model),
        "arena_measured": measured,
        "arena_bytes": arena,
        "arena_breakdown": row.get("arena_breakdown") or [],
        "ops": ops,
        "classes": classes,
        "input": {
            "shape": io_in.shape,
            "dtype": io_in.dtype,
            "layout": (row.get("tflite") or {}).get("input_layout") or "nhwc",
            "scale": io_in.scale,
            "zero_point": io_in.zero_point,
            "mean": list(norm["mean"]),
            "std": list(norm["std"]),
        },
        "output": {
            "shape": io_out.shape,
            "dtype": io_out.dtype,
            "scale": io_out.scale,
            "zero_point": io_out.zero_point,
        },
    }


def _answers(model: bytes, samples: bytes | None, arena: int, out_scale: float | None) -> dict:
    """The model's TFLM answers on the packaged samples: what --verify compares against."""
    from runtime_check.runtimes import ArtifactError
    from runtime_check.tflm import tflm_logits

    if samples is None:
        return {"samples": 0, "top1": [], "margin": [], "tolerance": 0.0}
    try:
        logits = tflm_logits(model, load_samples(samples), arena)
    except ArtifactError as exc:
        raise PackageError(str(exc)) from None
    top = np.sort(logits, axis=1)
    return {
        "samples": len(logits),
        "top1": logits.argmax(1).astype(int).tolist(),
        "margin": (top[:, -1] - top[:, -2]).astype(float).tolist(),
        # One int8 output step: another TFLM build may round one logit the other way.
        "tolerance": float(out_scale or 0.0),
    }


def build_mcu_files(
    out_dir: Path, allow_failed: bool = False, artifacts: tuple[str, ...] = ()
) -> tuple[dict[str, bytes], dict[str, Any]]:
    """Every file of the mcu package (name -> bytes) and its manifest."""
    from exporter.package import _samples

    report, classes, norm, row = _choose(out_dir, allow_failed, artifacts)
    model = (out_dir / row["path"]).read_bytes()
    spec = _spec(model, row, classes, norm)
    header = _header(report, row)
    files = {
        MODEL_CC: model_data_cc(model, classes, header).encode(),
        MODEL_H: model_data_h(spec, header).encode(),
        OPS_H: model_ops_h(spec["ops"], header).encode(),
        LABELS: ("\n".join(classes) + "\n").encode(),
    }
    samples = _samples(out_dir)
    if samples is not None:
        files[SAMPLES] = samples
    manifest: dict[str, Any] = {
        "manifest_version": MCU_MANIFEST_VERSION,
        "platform": PLATFORM,
        "name": out_dir.resolve().name,
        "target": report.get("target", {}).get("name"),
        "allow_failed": not report.get("passed") or not _held(row),
        "classes": classes,
        "model": spec,
        "flash_bytes": len(model),
        # Multiply-accumulates per image of the exported model (torch models only): with the
        # board's MAC rate, a first latency estimate TFLM on this machine cannot give.
        "macs": (report.get("compression") or {}).get("macs")
        or (report.get("reference") or {}).get("macs"),
        "flash_note": "the model array only: TFLM's, its kernels' and the application's code "
        "are not included",
        "validation": {
            "accuracy": row.get("accuracy"),
            "accuracy_drop": row.get("accuracy_drop"),
            "agreement": row.get("agreement"),
            "budgets": row.get("budgets"),
            "runtime": row.get("runtime"),
            "runtime_version": row.get("runtime_version"),
        },
        "expected": _answers(model, samples, spec["arena_bytes"], spec["output"]["scale"]),
        "edgepack": __version__,
    }
    manifest["files"] = {
        n: {"sha256": hashlib.sha256(d).hexdigest(), "bytes": len(d)}
        for n, d in sorted(files.items())
    }
    files[PACKAGE_MANIFEST] = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    return files, manifest


def _held(row: dict) -> bool:
    return row.get("status") == "ok" and all(b["ok"] for b in (row.get("budgets") or {}).values())


def package_mcu(
    out_dir: Path, *, force: bool = False, allow_failed: bool = False, artifacts: tuple = ()
):
    """Write ``out_dir/package/mcu/`` and ``out_dir/<name>-mcu.zip`` (deterministic)."""
    from exporter.package import PackageResult

    pkg, zip_path = package_path(out_dir, PLATFORM), package_zip(out_dir, PLATFORM)
    check_writable(pkg, force)
    check_writable(zip_path, force)
    files, manifest = build_mcu_files(out_dir, allow_failed, artifacts)
    with atomic_dir(pkg, force=force) as tmp:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        with atomic_path(zip_path, force=force) as ztmp:
            ztmp.write_bytes(zip_bytes(files))
    return PackageResult(pkg, zip_path, manifest, 0.0)


# ----- verifying ------------------------------------------------------------------------------


def is_mcu_zip(path: Path) -> bool:
    """Whether a package zip's manifest says platform mcu (False for anything unreadable: the
    mobile verifier then gives its own error)."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = {i.filename: i for i in check_entries(zf, path.stat().st_size, ZipLimits())}
            head = infos.get(PACKAGE_MANIFEST)
            if head is None or head.file_size > 16 << 20:
                return False
            return json.loads(read_entry(zf, head)).get("platform") == PLATFORM
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, AttributeError, PackageError):
        return False


def _read_mcu_manifest(data: bytes) -> dict:
    try:
        raw = json.loads(data)
    except ValueError as exc:
        raise PackageError(f"{PACKAGE_MANIFEST} is not JSON ({exc})") from None
    if not isinstance(raw, dict) or raw.get("manifest_version") != MCU_MANIFEST_VERSION:
        raise PackageError(
            f"{PACKAGE_MANIFEST}: not an mcu manifest of version {MCU_MANIFEST_VERSION}"
        )
    for key in ("files", "model", "expected"):
        if not isinstance(raw.get(key), dict):
            raise PackageError(f"{PACKAGE_MANIFEST}: no {key!r} object")
    return raw


class _Checked:
    """Adapter: verify._read_checked reads ``manifest.files[name].bytes / .sha256``."""

    def __init__(self, raw: dict):
        self.raw = raw
        self.files = {
            n: _FileEntry(int(f.get("bytes", -1)), str(f.get("sha256", "")))
            for n, f in raw["files"].items()
        }


class _FileEntry:
    def __init__(self, size: int, sha: str):
        self.bytes, self.sha256 = size, sha


def verify_mcu_zip(path: str | Path) -> dict[str, Any]:
    """Check an mcu package: every file against the manifest, the array in model_data.cc
    against the model's sha256, then run that array under TFLM in ``kTensorArenaSize`` bytes
    and compare its answers on the packaged samples with the recorded ones."""
    from runtime_check.runtimes import ArtifactError
    from runtime_check.tflm import tflm_logits

    path = Path(path)
    try:
        files, checked = _read_checked(path, lambda data: _Checked(_read_mcu_manifest(data)))
        manifest = checked.raw
        for required in (MODEL_CC, MODEL_H, OPS_H, LABELS):
            if required not in files:
                raise PackageError(f"the manifest does not list {required}")
        model = array_bytes(files[MODEL_CC].decode("utf-8", "replace"))
        if hashlib.sha256(model).hexdigest() != manifest["model"].get("sha256"):
            raise PackageError(f"the g_model_data array of {MODEL_CC} is not the packaged model")
        arena = _ARENA.search(files[MODEL_H].decode("utf-8", "replace"))
        if arena is None:
            raise PackageError(f"{MODEL_H} has no kTensorArenaSize")
        exp = manifest["expected"]
        result = {"zip": str(path), "files": len(files) + 1, "bytes": len(model)}
        result["arena_bytes"] = int(arena.group(1))
        if exp.get("samples") and SAMPLES in files:
            logits = tflm_logits(model, load_samples(files[SAMPLES]), result["arena_bytes"])
            _compare(logits, exp)
            result["samples"] = len(logits)
    except ArtifactError as exc:
        raise PackageError(f"{path}: {exc}") from None
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise PackageError(f"{path}: not a readable zip ({exc})") from None
    except PackageError as exc:
        raise PackageError(f"{path}: {exc}") from None
    return result


def _compare(logits: np.ndarray, exp: dict) -> None:
    top1, margin, tol = exp["top1"], exp["margin"], float(exp.get("tolerance", 0.0))
    if len(top1) != len(logits):
        raise PackageError(f"ran {len(logits)} samples, the manifest recorded {len(top1)}")
    off = [
        i
        for i, y in enumerate(logits.argmax(1))
        if int(y) != top1[i] and margin[i] > 2 * tol + 1e-9
    ]
    if off:
        raise PackageError(
            f"TFLM answers {len(off)} of {len(top1)} samples otherwise than recorded at packaging"
        )


__all__ = [
    "MODEL_CC",
    "MODEL_H",
    "OPS_H",
    "PLATFORM",
    "array_bytes",
    "arena_constant",
    "build_mcu_files",
    "is_mcu_zip",
    "package_mcu",
    "resolver_method",
    "verify_mcu_zip",
]
