"""report.json is typed: written from dataclasses, read back by them, described by generated
docs and a JSON Schema that real run and check reports validate against (that the docs are
current is tested with the other generated docs, tests/exporter/test_recipe.py)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from exporter.artifacts import load_index
from exporter.docs import ROOT
from exporter.errors import InputFileError
from exporter.outdir import ONNX_INT8, ONNX_INT8_PORTABLE, REPORT, check_report
from exporter.pipeline import RunOptions, run
from exporter.report.schema import SCHEMA_VERSION, Report, read_report
from exporter.targets.check import check_dir

FAST = ("runtime.runs=5", "runtime.warmup=1", "compress.finetune.epochs=0")


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory) -> Path:
    """A run with sparse copies and 7-bit ONNX weights, then a re-check without XNNPACK."""
    out = tmp_path_factory.mktemp("schema") / "run"
    run(
        RunOptions(
            model="seed-cnn",
            out=out,
            data="digits",
            overrides=(
                *FAST,
                'export.storage=["dense", "sparse"]',
                "quantize.reduce_range=on",
                "runtime.delegate=xnnpack",
                "budgets.max_accuracy_drop=100",
            ),
            quiet=True,
        )
    )
    check_dir(out, "x86_64", overrides=(*FAST, "runtime.delegate=none"), quiet=True)
    return out


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_run_and_check_reports_validate_against_the_schema(out_dir):
    schema = json.loads((ROOT / "docs" / "report.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    for path in (out_dir / REPORT, check_report(out_dir, "x86_64")):
        data = _json(path)
        jsonschema.validate(data, schema)
        # Reading and writing again is lossless: the dataclasses hold every field.
        assert Report.from_dict(data).to_dict() == data
    run_report, checked = _json(out_dir / REPORT), _json(check_report(out_dir, "x86_64"))
    assert run_report["schema_version"] == checked["schema_version"] == SCHEMA_VERSION
    assert run_report["quantization"]["method"] and checked["quantization"] is None
    assert checked["checked_dir"] == str(out_dir)


def test_schema_rejects_what_the_writer_never_writes(out_dir):
    schema = json.loads((ROOT / "docs" / "report.schema.json").read_text())
    data = _json(out_dir / REPORT)
    bad = copy.deepcopy(data)
    bad["artifacts"][0]["extra"] = {"delegate": "xnnpack"}  # the open dict of schema 1
    with pytest.raises(jsonschema.ValidationError, match="extra"):
        jsonschema.validate(bad, schema)
    bad = copy.deepcopy(data)
    bad["artifacts"][0]["bytes"] = "12 kB"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_sparse_tflite_recheck_reports_the_measured_delegate(out_dir):
    """The exporter's storage delegate and the runtime's delegate are different fields: a
    re-check with runtime.delegate=none reports none, not the export-time xnnpack."""
    ran = {a["path"]: a for a in _json(out_dir / REPORT)["artifacts"]}
    checked = {a["path"]: a for a in _json(check_report(out_dir, "x86_64"))["artifacts"]}
    sparse = [p for p, a in checked.items() if a["format"] == "tflite" and a["storage"] == "sparse"]
    assert sparse, "the run kept no sparse TFLite copy"
    for path in sparse:
        assert checked[path]["status"] == "ok"
        assert checked[path]["delegate"] == "none"
        assert checked[path]["tflite"]["storage_delegate"] == "xnnpack"
        assert ran[path]["delegate"] == "xnnpack"
    # Dense TFLite rows too: what ran is what the check asked for.
    assert checked["model.fp32.tflite"]["delegate"] == "none"


def test_artifact_index_reloads_to_the_report_rows(out_dir):
    rows = read_report(out_dir / REPORT).artifacts
    index = load_index(out_dir)
    assert [r.path for r in rows] == [a.path for a in index]
    for row, art in zip(rows, index, strict=True):
        # Equal but for the conversion time, which the index leaves out (wall time).
        if row.tflite is not None:
            assert row.tflite.conversion_s is not None and art.tflite.conversion_s is None
            row.tflite.conversion_s = None
        assert row.artifact == art


def _scales(path: Path) -> dict[str, np.ndarray]:
    model = onnx.load(str(path))
    return {
        i.name: numpy_helper.to_array(i)
        for i in model.graph.initializer
        if i.name.endswith("_scale")
    }


def test_one_calibration_for_both_int8_formats(out_dir):
    """With 7-bit ONNX weights the quantize stage also writes the full 8-bit twin from the same
    cached ranges, and the int8 TFLite model is converted from that twin."""
    rows = {a["path"]: a for a in _json(out_dir / REPORT)["artifacts"]}
    assert rows["model.int8.onnx"]["int8"]["reduce_range"] is True
    assert rows["model.int8.tflite"]["int8"]["qdq_source"] == ONNX_INT8_PORTABLE
    assert rows["model.int8.tflite"]["int8"]["reduce_range"] is False
    seven, eight = _scales(out_dir / ONNX_INT8), _scales(out_dir / ONNX_INT8_PORTABLE)
    assert seven.keys() == eight.keys()
    # Activations have one scale per tensor; weights and biases one per output channel.
    activations = [n for n in seven if seven[n].ndim == 0]
    per_channel = [n for n in seven if seven[n].ndim == 1]
    assert len(activations) >= 4 and len(per_channel) >= 8
    for name in activations:  # the same activation ranges
        np.testing.assert_array_equal(seven[name], eight[name])
    for name in per_channel:  # 8-bit weights (and so biases) take half the step of 7-bit ones
        np.testing.assert_allclose(seven[name], 2 * eight[name], rtol=0.02)


def test_reading_refuses_other_versions_and_names_bad_fields(out_dir, tmp_path):
    data = _json(out_dir / REPORT)
    path = tmp_path / "r.json"
    # A schema 2 report's `passed` may be a run nothing validated: it is not read as schema 3.
    path.write_text(json.dumps({**data, "schema_version": 2}))
    with pytest.raises(InputFileError, match=r"schema_version 2; this edgepack reads 3$"):
        read_report(path)
    bad = copy.deepcopy(data)
    bad["artifacts"][1]["latency_ms"]["p90"] = "fast"
    path.write_text(json.dumps(bad))
    with pytest.raises(InputFileError, match=r"report\.artifacts\[1\]\.latency_ms\.p90: expected"):
        read_report(path)
    bad = copy.deepcopy(data)
    del bad["reference"]["accuracy"]
    path.write_text(json.dumps(bad))
    with pytest.raises(InputFileError, match=r"report\.reference: no accuracy"):
        read_report(path)
    # An older file of the same version that lacks an optional field still reads.
    old = copy.deepcopy(data)
    del old["checked_dir"], old["artifacts"][0]["instructions_per_inference"]
    path.write_text(json.dumps(old))
    assert read_report(path).artifacts[0].instructions_per_inference is None
