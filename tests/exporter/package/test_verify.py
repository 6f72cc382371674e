"""The package checks that need no run: zip limits read from the central directory, and the
comparison of the models' answers with the manifest's record (tolerances, near-ties)."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from exporter.errors import PackageError
from exporter.package.verify import Expected, ExpectedModel, Measured, compare, expected
from exporter.package.zipfile_det import ZipLimits, read_zip, zip_bytes


def _zip(entries: dict[str, bytes], compress: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compress) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_read_zip_limits_from_the_central_directory():
    assert read_zip(zip_bytes({"a": b"1", "b": b"22"})) == {"a": b"1", "b": b"22"}
    zeros = _zip({"z": bytes(4 << 20)})  # 4 MiB of zeros deflate to ~4 KB: ratio ~1000
    with pytest.raises(PackageError, match=r"entry z declares 4194304 bytes .*ratio"):
        read_zip(zeros)
    # The same ratio on a small file is fine (labels.txt of repeated names compresses well).
    assert read_zip(_zip({"z": bytes(1000)})) == {"z": bytes(1000)}
    with pytest.raises(PackageError, match="3 entries"):
        read_zip(_zip({"a": b"", "b": b"", "c": b""}), ZipLimits(entries=2))
    with pytest.raises(PackageError, match="entry a declares 11 bytes"):
        read_zip(_zip({"a": b"x" * 11}), ZipLimits(entry_bytes=10))
    with pytest.raises(PackageError, match="12 bytes in all"):
        read_zip(_zip({"a": b"x" * 6, "b": b"y" * 6}), ZipLimits(total_bytes=10))


def test_read_zip_never_reads_past_the_declared_size():
    data = bytearray(_zip({"a": b"x" * 5000}, zipfile.ZIP_STORED))
    # Declare 100 bytes in the central directory (uncompressed and compressed size).
    cd = data.find(b"PK\x01\x02")
    data[cd + 20 : cd + 28] = (100).to_bytes(4, "little") * 2
    with pytest.raises(PackageError, match="not a readable zip"):
        read_zip(bytes(data))


def _expected(logits: dict[str, np.ndarray], labels=None) -> Expected:
    raw = expected(Measured("sample_inputs.npz", logits, labels))
    models = {k: ExpectedModel(**v) for k, v in raw.pop("models").items()}
    return Expected(**raw, models=models)


LOGITS = np.array([[5.0, 1.0, 0.0], [0.0, 4.0, 1.0], [2.0, 2.01, 0.0]], np.float32)


def test_compare_passes_the_same_answers_and_kernel_noise():
    exp = _expected({"model.tflite": LOGITS, "model.ort": LOGITS}, np.array([0, 1, 1]))
    assert exp.models["model.ort"].accuracy == pytest.approx(100.0)
    assert exp.models["model.tflite"].tolerance == pytest.approx(0.02 * 5.0)
    noisy = LOGITS.copy()
    noisy[2] = [2.02, 2.0, 0.0]  # a near-tie (margin 0.01) flips: noise, not another model
    res = compare(
        Measured(
            "sample_inputs.npz", {"model.tflite": noisy, "model.ort": LOGITS}, np.array([0, 1, 1])
        ),
        exp,
    )
    assert res["tflite_ort_agreement"] == pytest.approx(2 / 3)
    assert res["ort_accuracy"] == pytest.approx(100.0)


def test_compare_fails_other_answers_naming_them():
    exp = _expected({"model.tflite": LOGITS, "model.ort": LOGITS}, np.array([0, 1, 1]))
    other = LOGITS[:, [1, 2, 0]].copy()  # every image answered with another class
    measured = Measured(
        "sample_inputs.npz", {"model.tflite": other, "model.ort": LOGITS}, np.array([0, 1, 1])
    )
    with pytest.raises(PackageError) as err:
        compare(measured, exp)
    msg = str(err.value)
    assert "model.tflite on 3 of 3 images" in msg and "model.ort" not in msg.split(";")[0]
    assert "top-1 agreement 0.000, 1.000 recorded" in msg
    shifted = LOGITS + np.float32(0.2)  # top-1 kept, scores moved by twice the tolerance
    measured = Measured("sample_inputs.npz", {"model.tflite": LOGITS, "model.ort": shifted}, None)
    with pytest.raises(PackageError, match="model.ort on 3 of 3 images"):
        compare(measured, exp)
    with pytest.raises(PackageError, match="2 image.* from sample_inputs.npz, .* recorded 3"):
        compare(Measured("sample_inputs.npz", {k: LOGITS[:2] for k in exp.models}, None), exp)
