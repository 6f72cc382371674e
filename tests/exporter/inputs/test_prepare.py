"""Class names and normalization across --data, --eval-data and the weights' training record."""

import json

import numpy as np
import pytest
from PIL import Image

from exporter.errors import DataError
from exporter.inputs.data import load_data
from exporter.inputs.prepare import resolve_normalization, split_data
from exporter.recipe import EvalSpec


def _folder(root, classes, per_class=2, channels=1):
    for i, cls in enumerate(classes):
        (root / cls).mkdir(parents=True)
        for j in range(per_class):
            # Each image carries its class name's index in the folder it came from and its number.
            arr = np.full((4, 4, channels), 10 * i + j, np.uint8)
            Image.fromarray(arr[..., 0] if channels == 1 else arr).save(root / cls / f"{j}.png")
    return f"imagefolder:{root}"


def test_eval_folder_missing_a_class_is_remapped_by_name(tmp_path):
    train = _folder(tmp_path / "train", ["a", "b", "c"])
    evald = _folder(tmp_path / "eval", ["a", "c"])
    full, splits = split_data(train, evald, EvalSpec())
    assert splits.eval.classes == full.classes == ("a", "b", "c")
    # eval's c images (pixel 10, 11: index 1 in their own folder) are class 2 of the training data
    pixels = splits.eval.images[:, 0, 0, 0].tolist()
    assert list(zip(pixels, splits.eval.labels.tolist(), strict=True)) == [
        (0, 0),
        (1, 0),
        (10, 2),
        (11, 2),
    ]
    assert "no eval images of class b" in splits.eval_note


def test_eval_classes_in_another_order_are_remapped(tmp_path):
    train = _folder(tmp_path / "train", ["a", "b", "c"])
    path = tmp_path / "eval.npz"
    np.savez(
        path,
        images=np.zeros((3, 4, 4, 1), np.uint8),
        labels=np.array([0, 1, 2]),
        classes=np.array(["c", "a", "b"]),
    )
    _, splits = split_data(train, f"npz:{path}", EvalSpec())
    assert splits.eval.labels.tolist() == [2, 0, 1]
    assert "matched to the training classes by name" in splits.eval_note


def test_eval_class_unknown_to_training_is_refused(tmp_path):
    train = _folder(tmp_path / "train", ["a", "b", "c"])
    evald = _folder(tmp_path / "eval", ["a", "b", "x", "y"])
    with pytest.raises(DataError) as err:
        split_data(train, evald, EvalSpec())
    assert str(err.value).startswith(
        "eval data has classes [a, b, x, y]; training data [a, b, c]: x, y are not training classes"
    )


def test_integer_labels_are_matched_by_index(tmp_path):
    train = _folder(tmp_path / "train", ["a", "b", "c"])
    path = tmp_path / "eval.npz"
    np.savez(path, images=np.zeros((2, 4, 4, 1), np.uint8), labels=np.array([2, 0]))
    _, splits = split_data(train, f"npz:{path}", EvalSpec())
    assert splits.eval.labels.tolist() == [2, 0] and splits.eval_note == f"--eval-data npz:{path}"


def _record(tmp_path, **fields):
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"")
    record = {"mean": [0.5], "std": [0.25], "classes": [str(i) for i in range(10)], **fields}
    (tmp_path / "w.pt.json").write_text(json.dumps(record))
    return str(weights)


def test_training_record_normalization_and_classes(tmp_path):
    digits = load_data("digits")
    norm = resolve_normalization(digits, None, None, _record(tmp_path))
    assert norm.mean == (0.5,) and norm.std == (0.25,) and "w.pt.json" in norm.source
    letters = load_data(_folder(tmp_path / "letters", list("abcdefghij"), per_class=1))
    with pytest.raises(DataError, match=r"w.pt.json: the weights were trained on classes \[0, 1"):
        resolve_normalization(letters, None, None, _record(tmp_path))
    # --mean/--std replace the record's normalization, not what its classes say.
    with pytest.raises(DataError, match="trained on classes"):
        resolve_normalization(letters, (0.5,), (0.2,), _record(tmp_path))


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"mean": [0.1, 0.2]}, r"w.pt.json: mean has 2 values for 3-channel images \(needs 1 or 3"),
        ({"std": [float("nan")]}, r"w.pt.json: std values must be finite numbers, got \[nan\]"),
        ({"std": [0.2, 0.0, 0.2]}, r"w.pt.json: std values must be > 0"),
        ({"mean": "0.5"}, r"w.pt.json: mean must be a list of numbers"),
        ({"classes": [0, 1, 2]}, r"w.pt.json: classes must be a list of names"),
    ],
)
def test_malformed_training_record_is_named(tmp_path, fields, match):
    rgb = load_data(_folder(tmp_path / "rgb", ["a", "b", "c"], channels=3))
    with pytest.raises(DataError, match=match):
        resolve_normalization(
            rgb, None, None, _record(tmp_path, **{"classes": ["a", "b", "c"], **fields})
        )


@pytest.mark.parametrize(
    "mean, std, match",
    [
        ((float("nan"),), (1.0,), r"--mean values must be finite numbers, got \[nan\]"),
        ((0.5,), (float("inf"),), r"--std values must be finite numbers, got \[inf\]"),
        ((0.5,), (0.0,), r"--std values must be > 0"),
        ((0.5, 0.5), (0.2,), r"--mean has 2 values for 1-channel images"),
        ((0.5,), None, "--mean and --std go together"),
    ],
)
def test_bad_mean_std_from_the_api(mean, std, match):
    with pytest.raises(DataError, match=match):
        resolve_normalization(load_data("digits"), mean, std, None)


def test_one_mean_std_value_serves_every_channel(tmp_path):
    rgb = load_data(_folder(tmp_path / "rgb", ["a", "b"], channels=3))
    norm = resolve_normalization(rgb, (0.5,), (0.25,), None)
    assert norm.mean == (0.5,) * 3 and norm.std == (0.25,) * 3
