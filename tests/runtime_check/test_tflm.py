"""runtime_check.tflm against TensorFlow Lite Micro itself: the arena search, the op check,
the operator reader, and the figures of a TFLM check."""

from __future__ import annotations

import json

import numpy as np
import pytest

from runtime_check.evaluate import load_batch, logits_for
from runtime_check.tflm import (
    _trial,
    float_operators,
    minimal_arena,
    model_operators,
    tflm_logits,
    unsupported_op,
)

pytest.importorskip("tflite_micro")


@pytest.fixture(scope="module")
def model(mcu_digits) -> bytes:
    return (mcu_digits / "model.int8.tflite").read_bytes()


def test_the_minimal_arena_is_the_boundary_where_tflm_starts_to_run(model):
    arena, breakdown = minimal_arena(model)
    assert _trial(model, arena)[0]
    # One byte less fails (cleanly or by a crash in the child): the search found the edge.
    assert not _trial(model, arena - 1)[0]
    # The recording allocator's own report, captured from C++'s file descriptor 2.
    total = next(line for line in breakdown if line.startswith("Arena allocation total"))
    assert int(total.split()[3]) <= arena


def test_an_int8_model_has_only_integer_operators_and_every_one_has_a_kernel(model):
    ops = model_operators(model)
    assert {o.op for o in ops} >= {"CONV_2D", "FULLY_CONNECTED"}
    assert float_operators(ops) == []
    assert unsupported_op(model) is None


def test_a_float_model_is_seen_as_float_operator_by_operator(mcu_digits, tmp_path):
    from exporter.tflite import convert_onnx_file

    convert_onnx_file(mcu_digits / "model.fp32.onnx", tmp_path / "fp32.tflite")
    fp32 = (tmp_path / "fp32.tflite").read_bytes()
    floats = float_operators(model_operators(fp32))
    assert [o.op for o in floats] == [o.op for o in model_operators(fp32)]
    assert floats[0].op == "CONV_2D" and floats[0].output


def test_tflm_answers_as_litert_does_on_the_eval_images(mcu_digits, model):
    batch_path = mcu_digits / "eval_batch.npz"
    batch = load_batch(batch_path)
    arena, _ = minimal_arena(model)
    tflm = tflm_logits(model, batch, arena)
    litert = logits_for(mcu_digits / "model.int8.tflite", batch_path, delegate="none")
    same = float((tflm.argmax(1) == litert.argmax(1)).mean())
    assert same >= 0.99
    # Both dequantize the same int8 outputs: any difference is one output step at most.
    report = json.loads((mcu_digits / "report.json").read_text())
    assert np.abs(tflm - litert).max() <= 1.01 * _output_step(report, mcu_digits)


def _output_step(report: dict, out) -> float:
    from runtime_check.tflm import allocate

    it = allocate((out / "model.int8.tflite").read_bytes(), 1 << 22).interpreter
    return float(it.get_output_details(0)["quantization_parameters"]["scales"][0])


def test_a_too_small_arena_is_an_error_naming_its_size(model):
    from runtime_check.runtimes import ArtifactError

    with pytest.raises(ArtifactError, match="does not run in a 2,048-byte arena"):
        tflm_logits(model, {"inputs": np.zeros((1, 1, 8, 8), np.float32)}, 2048)
