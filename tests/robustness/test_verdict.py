"""The verdict means what it says: what was not validated fails, what cannot mean anything says
so, the eval set's resolution is stated, and what `check` validates is what `run` wrote.

Catalogue cases (``CASES``) plus tests that need a specific successful report or a real
subprocess of ``python -m runtime_check``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from exporter.outdir import ARTIFACT_INDEX, OUTPUT_MARKER
from tests.helpers import ROOT
from tests.robustness.harness import Call, Ctx, check_case, digits_like, npz
from tests.robustness.options import FAST, FP32_ONLY


def _report(ctx: Ctx) -> dict:
    return json.loads((ctx.out / "report.json").read_text())


def _at_sign_in_out(ctx: Ctx) -> Call:
    """`--out` with an `@` in it: every artifact is found and validated, the verdict passes."""
    ctx.out = ctx.tmp / "a@b" / "out"
    ctx.out.mkdir(parents=True)
    (ctx.out / "keep.txt").write_text("the user's previous run")
    (ctx.out / OUTPUT_MARKER).write_text("{}")  # an earlier edgepack output: --force replaces it

    def after(res):
        report = _report(ctx)
        assert res.exit_code == 0, res.output
        assert [a["status"] for a in report["artifacts"]] == ["ok", "ok"], report["artifacts"]
        assert all(a["accuracy"] is not None for a in report["artifacts"])
        assert report["passed"] is True and report["verdict"] == "passed"

    return Call(ctx.seeded(*FP32_ONLY), (), ok=True, after=after)


def _size_budget_with_at_sign(ctx: Ctx) -> Call:
    """A size budget every artifact breaks, under an `@` path: it is applied and fails."""
    ctx.out = ctx.tmp / "x@y" / "out"
    ctx.out.mkdir(parents=True)
    (ctx.out / "keep.txt").write_text("the user's previous run")
    (ctx.out / OUTPUT_MARKER).write_text("{}")  # an earlier edgepack output: --force replaces it

    def after(res):
        report = _report(ctx)
        assert res.exit_code == 1, res.output
        assert report["passed"] is False and report["verdict"] == "failed"
        for a in report["artifacts"]:
            assert a["budgets"]["max_bytes"]["ok"] is False, a
        assert any("max_bytes" in r for r in report["reasons"]), report["reasons"]

    return Call(ctx.seeded(*FP32_ONLY, "--set", "budgets.max_bytes=1000"), (), ok=True, after=after)


def _random_weights(ctx: Ctx) -> Call:
    """A built-in model without --weights: the verdict is `not_meaningful`, exit 1."""

    def after(res):
        report = _report(ctx)
        assert res.exit_code == 1, res.output
        assert report["passed"] is False and report["verdict"] == "not_meaningful"
        assert any("random initial weights" in r for r in report["reasons"]), report["reasons"]
        assert report["model"]["random_weights"] is True
        assert "NOT MEANINGFUL" in res.output

    return Call(
        ["run", "--model", "seed-cnn", "--out", ctx.out, "--force", *FAST, *FP32_ONLY],
        (),
        ok=True,
        after=after,
    )


def _one_class_eval(ctx: Ctx) -> Call:
    """Every eval image of one class: 100 % means nothing; the verdict says so."""
    images, _ = digits_like(200)
    # Class 9 of the trained 10-class model, so the labels still fit its output width.
    path = npz(ctx, "one.npz", images, np.full(len(images), 9, np.int64))

    def after(res):
        report = _report(ctx)
        assert res.exit_code == 1, res.output
        assert report["verdict"] == "not_meaningful" and report["passed"] is False
        assert any("one class" in r for r in report["reasons"]), report["reasons"]
        assert report["reference"]["eval_classes"] == 1

    return Call(ctx.seeded("--data", f"npz:{path}", *FP32_ONLY), (), ok=True, after=after)


def _chance_level(ctx: Ctx) -> Call:
    """Random labels the trained model cannot know: its accuracy is chance, not a baseline."""
    path = npz(ctx, "noise.npz", *digits_like(300))

    def after(res):
        report = _report(ctx)
        assert res.exit_code == 1, res.output
        assert report["verdict"] == "not_meaningful", report["reasons"]
        assert any("chance" in r for r in report["reasons"]), report["reasons"]

    return Call(ctx.seeded("--data", f"npz:{path}", *FP32_ONLY), (), ok=True, after=after)


def _coarse_eval_set(ctx: Ctx) -> Call:
    """60 eval images: one image is 1.67 points, more than the 1.5-point budget; it is said."""

    def after(res):
        report = _report(ctx)
        assert report["reference"]["samples"] == 60
        assert report["reference"]["points_per_image"] == pytest.approx(100 / 60)
        assert any("1 image = 1.67 points" in n for n in report["notes"]), report["notes"]

    # The overrides come after FAST's, so they win.
    args = [*ctx.seeded(*FP32_ONLY), "--set", "eval.samples=60"]
    return Call(
        [*args, "--set", "budgets.max_accuracy_drop=1.5"],
        (),
        ok=True,
        after=after,
    )


def _check_target(out: Path) -> list:
    return ["check", out, "--target", "x86_64", "-q", "--set", "runtime.runs=3"]


def _replaced_artifact(ctx: Ctx) -> Call:
    """Another file copied over an artifact after the run (here: padded, still loadable)."""
    out = ctx.copy_out()
    tfl = out / "model.fp32.tflite"
    tfl.write_bytes(tfl.read_bytes() + b"\0" * 64)
    return Call(_check_target(out), ("model.fp32.tflite", "differs from", ARTIFACT_INDEX))


def _swapped_artifacts(ctx: Ctx) -> Call:
    """Two artifacts swapped under each other's names."""
    out = ctx.copy_out()
    a, b = out / "model.fp32.tflite", out / "model.fp32.onnx"
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)
    return Call(_check_target(out), ("model.fp32.onnx", "differs from", ARTIFACT_INDEX))


def _index_without_hashes(ctx: Ctx) -> Call:
    """artifacts.json of an edgepack that recorded no hashes: nothing can be verified."""
    out = ctx.copy_out()
    rows = json.loads((out / ARTIFACT_INDEX).read_text())
    for row in rows:
        row.pop("sha256", None)
    (out / ARTIFACT_INDEX).write_text(json.dumps(rows))
    return Call(_check_target(out), ("no sha256", "re-run `edgepack run`"))


CASES = [
    ("output/at-sign-in-out", _at_sign_in_out),
    ("verdict/size-budget-under-at-sign", _size_budget_with_at_sign),
    ("verdict/random-weights", _random_weights),
    ("verdict/one-class-eval", _one_class_eval),
    ("verdict/chance-level-reference", _chance_level),
    ("verdict/coarse-eval-set", _coarse_eval_set),
    ("output/artifact-replaced-after-run", _replaced_artifact),
    ("output/artifacts-swapped", _swapped_artifacts),
    ("output/index-without-hashes", _index_without_hashes),
]


@pytest.mark.parametrize("builder", [b for _, b in CASES], ids=[i for i, _ in CASES])
def test_case(builder, tmp_path, request, monkeypatch):
    check_case(builder, tmp_path, request, monkeypatch)


def test_runtime_check_cli_takes_paths_as_they_are(seed_out, tmp_path):
    """`python -m runtime_check` under a directory with `@` (and a name starting like an
    option) reads every artifact; the layout is an option of its own."""
    odd = tmp_path / "a@nhwc" / "-dir"
    odd.mkdir(parents=True)
    for name in ("model.fp32.onnx", "model.fp32.tflite", "eval_batch.npz"):
        shutil.copy(seed_out / name, odd / name)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "runtime_check",
            "--batch",
            str(odd / "eval_batch.npz"),
            "--runs",
            "2",
            "--warmup",
            "0",
            "--layout",
            "nchw",
            "--layout",
            "nhwc",
            "--",
            str(odd / "model.fp32.onnx"),
            str(odd / "model.fp32.tflite"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)["results"]
    assert [r["status"] for r in results] == ["ok", "ok"], results
    assert [r["input"]["layout"] for r in results] == ["nchw", "nhwc"]
    reference = json.loads((seed_out / "report.json").read_text())["artifacts"]
    assert [r["accuracy"] for r in results] == [a["accuracy"] for a in reference]


def test_index_records_what_was_written(seed_out):
    """artifacts.json holds each file's sha256 and size, as computed here independently."""
    rows = json.loads((seed_out / ARTIFACT_INDEX).read_text())
    assert rows
    for row in rows:
        data = (seed_out / row["path"]).read_bytes()
        assert row["sha256"] == hashlib.sha256(data).hexdigest()
        assert row["bytes"] == len(data)
    report = json.loads((seed_out / "report.json").read_text())
    assert [a["sha256"] for a in report["artifacts"]] == [r["sha256"] for r in rows]
