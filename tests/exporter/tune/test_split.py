"""Where trials are scored and where the front is validated: the front (and best/) on exactly
the eval images `edgepack run` validates on, the trials on other hold-out images."""

from __future__ import annotations

import numpy as np

from exporter.inputs.data import Dataset
from exporter.inputs.prepare import eval_sample
from exporter.recipe import load_recipe
from exporter.tuning.objective import _tuning_split


def _eval_set(n: int) -> Dataset:
    # Each image holds its own index, so a subset says which images it took.
    images = np.zeros((n, 2, 2, 1), np.uint8)
    images[:, 0, 0, 0] = np.arange(n) % 256
    images[:, 0, 1, 0] = np.arange(n) // 256
    return Dataset(images, np.arange(n) % 10, tuple("abcdefghij"), "test")


def _ids(ds: Dataset) -> set[int]:
    return set(
        (ds.images[:, 0, 0, 0].astype(int) + 256 * ds.images[:, 0, 1, 0].astype(int)).tolist()
    )


def test_the_front_sees_what_edgepack_run_sees_and_no_trial_does():
    recipe = load_recipe("x86_64", ["eval.samples=400", "tune.samples=300"])
    evald = _eval_set(1000)
    final, tune, where = _tuning_split(evald, recipe)
    assert _ids(final) == set(eval_sample(1000, recipe.eval).tolist())
    assert len(tune) == 300 and not _ids(tune) & _ids(final)
    # Stratified: each class keeps its share of the 600 images the run does not validate on.
    rest = np.setdiff1d(np.arange(1000), eval_sample(1000, recipe.eval))
    share = np.bincount(evald.labels[rest], minlength=10) * 300 / 600
    assert np.abs(np.bincount(tune.labels, minlength=10) - share).max() <= 1
    assert "the 400 eval images `edgepack run` validates on" in where


def test_few_eval_images_split_in_two_and_say_best_sees_both():
    recipe = load_recipe("x86_64", ["eval.samples=2000", "tune.samples=300"])
    final, tune, where = _tuning_split(_eval_set(360), recipe)
    assert len(tune) == 180 and len(final) == 180  # at most half for the tuning split
    assert not _ids(tune) & _ids(final)
    assert "also sees the tuning split" in where
