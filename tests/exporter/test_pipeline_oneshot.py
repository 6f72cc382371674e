"""The one-shot run's cost (issue #16): every eval image through the original torch model once,
an eval batch of uint8 pixels + the normalization that the device decodes to the very float32
inputs the pipeline used, and an int8 search whose cost is bounded and reported."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import exporter
from exporter.inputs.data import Normalization, load_data
from exporter.models.zoo import SeedCNN
from exporter.pipeline import tuning_count
from exporter.recipe import load_recipe
from runtime_check import check
from runtime_check.batch import load_batch, normalize
from runtime_check.evaluate import logits_for

DENSE = (
    "compress.prune.sparsity=0",
    "compress.finetune.epochs=0",
    "runtime.runs=3",
    "runtime.warmup=1",
    'export.storage=["dense"]',
)


@pytest.fixture(scope="module")
def counted_run(digits_seed, tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    """A dense one-shot run of the trained seed CNN, fp32 + int8 in both formats, with every
    real (not traced) input the SeedCNN forward received recorded by a global hook."""
    seen: list[np.ndarray] = []

    def hook(module, args, _output):
        x = args[0] if args else None
        # torch.export traces with fake tensors: those are no inference on an image.
        if isinstance(module, SeedCNN) and type(x) is torch.Tensor:
            seen.append(x.detach().numpy().copy())

    out = tmp_path_factory.mktemp("oneshot") / "dist"
    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        result = exporter.run(
            "seed-cnn", out, weights=str(digits_seed), data="digits", overrides=DENSE, quiet=True
        )
    finally:
        handle.remove()
    assert result.passed, json.dumps(result.report["check"], indent=1)[:2000]
    return out, seen


def test_each_eval_image_goes_through_the_original_model_once(counted_run):
    out, seen = counted_run
    batch = load_batch(out / "eval_batch.npz")
    eval_x = batch["inputs"]
    images = [r.tobytes() for r in eval_x]
    assert len(set(images)) == len(images)  # digits' hold-out has no duplicate image
    forwarded = [r.tobytes() for r in np.concatenate(seen)]
    # Every eval image was forwarded exactly once (the int8 search and the parity check run
    # ONNX models, never torch); the other forwards are the example inputs of the MAC count
    # and the export, no image.
    counts = {img: forwarded.count(img) for img in images}
    assert set(counts.values()) == {1}, sorted(set(counts.values()))
    # And the logits those forwards gave are the report's reference, on the same images.
    model = SeedCNN(1, (8, 8), 10).eval()
    report = json.loads((out / "report.json").read_text())
    with torch.no_grad():
        model.load_state_dict(torch.load(report["model"]["weights"], weights_only=True))
        again = model(torch.from_numpy(eval_x)).numpy()
    np.testing.assert_allclose(batch["reference_logits"], again, rtol=1e-5, atol=1e-5)
    acc = float((again.argmax(1) == batch["labels"]).mean() * 100)
    assert report["reference"]["accuracy"] == pytest.approx(acc, abs=1e-9)


def test_eval_batch_holds_pixels_and_normalization_not_float_copies(counted_run):
    out, _ = counted_run
    with np.load(out / "eval_batch.npz") as z:
        stored = {k: z[k] for k in z.files}
    assert "inputs" not in stored
    assert stored["images"].dtype == np.uint8 and stored["images"].shape[1:] == (8, 8, 1)
    report = json.loads((out / "report.json").read_text())
    norm = report["data"]["normalization"]
    assert stored["mean"].tolist() == norm["mean"] and stored["std"].tolist() == norm["std"]
    # The pixels are the hold-out images of digits, as the data set holds them.
    digits = load_data("digits")
    pool = {img.tobytes() for img in digits.images}
    assert all(img.tobytes() in pool for img in stored["images"])


def test_device_side_inputs_and_figures_equal_the_float32_path_bit_for_bit(counted_run, tmp_path):
    """The batch of an older edgepack held the float32 inputs themselves; the device now
    decodes them from pixels. Same inputs, same logits and figures, bit for bit."""
    out, _ = counted_run
    batch = load_batch(out / "eval_batch.npz")
    norm = Normalization(tuple(batch["mean"]), tuple(batch["std"]), "test")
    # The exporter's float32 path, written out independently of runtime_check's function.
    x = batch["images"].astype(np.float32) / 255.0
    x = (x - np.asarray(norm.mean, np.float32)) / np.asarray(norm.std, np.float32)
    old_inputs = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    assert batch["inputs"].dtype == np.float32
    assert np.array_equal(batch["inputs"], old_inputs)
    assert np.array_equal(norm.apply(batch["images"]), old_inputs)
    old = tmp_path / "old_batch.npz"  # the layout edgepack wrote before: float32 inputs
    np.savez(
        old,
        inputs=old_inputs,
        labels=batch["labels"],
        reference_logits=batch["reference_logits"],
        images=batch["images"],
    )
    paths = [out / n for n in ("model.fp32.onnx", "model.fp32.tflite", "model.int8.tflite")]
    for path in paths:
        new_logits = logits_for(path, out / "eval_batch.npz")
        assert np.array_equal(new_logits, logits_for(path, old)), path
    figures = ("accuracy", "agreement", "max_abs_diff", "predictions", "samples", "input")
    new_res = check(paths, out / "eval_batch.npz", runs=1, warmup=0)["results"]
    old_res = check(paths, old, runs=1, warmup=0)["results"]
    for a, b in zip(new_res, old_res, strict=True):
        assert a["status"] == b["status"] == "ok", (a, b)
        assert {k: a[k] for k in figures} == {k: b[k] for k in figures}, a["path"]


def test_an_older_float_batch_is_still_checked_and_a_broken_one_refused(counted_run, tmp_path):
    out, _ = counted_run
    batch = load_batch(out / "eval_batch.npz")
    old = tmp_path / "eval_batch.npz"
    np.savez(
        old,
        inputs=batch["inputs"],
        labels=batch["labels"],
        reference_logits=batch["reference_logits"],
    )
    assert np.array_equal(load_batch(old)["inputs"], batch["inputs"])
    broken = tmp_path / "broken.npz"
    np.savez(broken, images=batch["images"], labels=batch["labels"])
    with pytest.raises(ValueError, match=r"lacks mean, reference_logits, std"):
        load_batch(broken)


def test_normalize_is_float32_throughout():
    """numpy 1 promotes a float64 mean differently than numpy 2: every operand is float32."""
    img = np.arange(2 * 3 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3, 3) * 7
    mean, std = (0.4914, 0.4822, 0.4465), (0.247, 0.2435, 0.2616)
    got = normalize(img, np.asarray(mean, np.float64), np.asarray(std, np.float64))
    want = np.empty((2, 3, 3, 3), np.float32)
    for c in range(3):
        plane = img[..., c].astype(np.float32) / np.float32(255)
        want[:, c] = (plane - np.float32(mean[c])) / np.float32(std[c])
    assert got.dtype == np.float32 and got.flags.c_contiguous
    assert np.array_equal(got, want)


def test_the_report_shows_what_the_int8_search_spent(counted_run):
    out, _ = counted_run
    quant = json.loads((out / "report.json").read_text())["quantization"]
    cost = quant["cost"]
    methods = {a["method"] for a in quant["attempts"]}
    assert cost["calibrations"] == len(methods)
    assert cost["evaluations"] == 1 + len(quant["attempts"])
    assert cost["sensitivity_passes"] in (1, 2)
    assert len(quant["sensitivity"]) > cost["sensitivity_passes"]
    assert 0 < cost["sensitivity_seconds"] + cost["evaluation_seconds"] <= quant["seconds"]


@pytest.mark.parametrize(
    "gmacs_per_image, images",
    [(None, 1000), (0.002, 1000), (1.81, 552), (4.09, 250), (40.0, 250)],
)
def test_a_large_net_is_tuned_on_fewer_images(gmacs_per_image, images):
    macs = None if gmacs_per_image is None else int(gmacs_per_image * 1e9)
    assert tuning_count(load_recipe("x86_64").quantize, macs) == images


def test_the_report_says_when_the_mac_budget_cut_the_tuning_images(digits_seed, tmp_path):
    cut = ("quantize.tuning_gmacs=0.0001", 'export.precisions=["fp32", "int8"]')
    exporter.run(
        "seed-cnn",
        tmp_path / "dist",
        weights=str(digits_seed),
        data="digits",
        overrides=(*DENSE, *cut),
        quiet=True,
    )
    q = json.loads((tmp_path / "dist" / "report.json").read_text())["quantization"]
    assert q["cost"]["tuning_images"] == 250
    assert "tuned on 250 training images, not quantize.tuning_samples = 1000" in q["calibration"]
