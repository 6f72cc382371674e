import hashlib

import numpy as np
import pytest
from PIL import Image

from exporter.errors import DataError, InputFileError
from exporter.inputs.data import check_fits, load_data, stratified_split


def test_digits_embedded():
    ds = load_data("digits")
    assert ds.images.shape == (1797, 8, 8, 1) and ds.images.dtype == np.uint8
    assert ds.images.max() == 255 and len(ds.classes) == 10


def test_shipped_digits_are_pinned():
    """The shipped digits.npz, as loaded, is exactly what sklearn's load_digits gave.

    The digests were taken from the loader's output while it still read sklearn's copy; a
    changed file, order or pixel scaling would change a trained demo model without a word.
    """
    ds = load_data("digits")
    assert ds.images.shape == (1797, 8, 8, 1) and ds.labels.dtype == np.int64
    assert ds.classes == tuple("0123456789")
    # The class counts of the UCI test set (optdigits.tes).
    assert np.bincount(ds.labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    assert hashlib.sha256(ds.images.tobytes()).hexdigest() == (
        "b41ca9fd335466eee997366c2e6f6bbe0a1b4582afe091fc4eba35f4a254182f"
    )
    assert hashlib.sha256(ds.labels.tobytes()).hexdigest() == (
        "a3c91c262eddcf7ba8f0e37507c30284493c9b20412ffe4af30d536401f7ba21"
    )
    # Only the 17 levels of a 0..16 count, scaled: no resampling or smoothing crept in.
    assert np.array_equal(np.unique(ds.images), np.round(np.arange(17) * 255 / 16))


def test_npz_roundtrip(tiny_npz):
    ds = load_data(f"npz:{tiny_npz}")
    assert ds.image_shape == (3, 12, 10)
    assert ds.classes == ("r", "g", "b")


def test_stratified_split_is_seeded_and_keeps_class_shares():
    ds = load_data("digits")
    train, hold = stratified_split(ds, 0.2, seed=3)
    train2, hold2 = stratified_split(ds, 0.2, seed=3)
    assert np.array_equal(hold.labels, hold2.labels) and np.array_equal(hold.images, hold2.images)
    assert len(train) + len(hold) == len(ds)
    for c in range(10):
        share = (hold.labels == c).sum() / (ds.labels == c).sum()
        assert abs(share - 0.2) < 0.02
    _, other = stratified_split(ds, 0.2, seed=4)
    assert not np.array_equal(other.images, hold.images)


@pytest.mark.parametrize(
    "arrays, match",
    [
        ({"images": np.zeros((0, 8, 8, 3), np.uint8), "labels": np.zeros(0, np.int64)}, "empty"),
        ({"images": np.zeros((4, 8, 8, 3), np.uint8)}, "needs arrays 'images' and 'labels'"),
        ({"images": np.full((4, 8, 8, 3), np.nan), "labels": np.zeros(4)}, "NaN or Inf"),
        (
            {"images": np.zeros((4, 8, 8, 3), np.uint8), "labels": np.zeros(3)},
            "4 images but labels",
        ),
        ({"images": np.zeros((4, 8, 8, 3), np.uint8), "labels": -np.ones(4)}, "negative label"),
        ({"images": np.zeros((4, 8, 8, 7), np.uint8), "labels": np.zeros(4)}, "C in 1,3,4"),
    ],
)
def test_bad_npz(tmp_path, arrays, match):
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=match):
        load_data(f"npz:{path}")


def test_not_an_npz(tmp_path):
    path = tmp_path / "d.npz"
    path.write_bytes(b"garbage")
    with pytest.raises(InputFileError, match="not a readable .npz"):
        load_data(f"npz:{path}")


def test_missing_file_and_unknown_spec(tmp_path):
    with pytest.raises(InputFileError, match="not found"):
        load_data(f"npz:{tmp_path / 'x.npz'}")
    with pytest.raises(DataError, match="unknown data spec 'mnist'"):
        load_data("mnist")


def _folder(tmp_path):
    root = tmp_path / "imgs"
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((6, 5, 3), 40 * i, np.uint8)).save(root / cls / f"{i}.png")
    return root


def test_imagefolder(tmp_path):
    ds = load_data(f"imagefolder:{_folder(tmp_path)}")
    assert ds.classes == ("cat", "dog") and ds.images.shape == (6, 6, 5, 3)
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_imagefolder_corrupt_image_is_named(tmp_path):
    root = _folder(tmp_path)
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"corrupt image .*dog/broken.png"):
        load_data(f"imagefolder:{root}")


def test_cifar10_binary(tmp_path):
    rec = np.zeros((5, 3073), np.uint8)
    rec[:, 0] = [0, 1, 2, 3, 9]
    rec[:, 1:1025] = 200  # red plane
    (tmp_path / "data_batch_1.bin").write_bytes(rec.tobytes())
    ds = load_data(f"cifar10:{tmp_path}")
    assert ds.images.shape == (5, 32, 32, 3)
    assert (ds.images[..., 0] == 200).all() and (ds.images[..., 1] == 0).all()
    assert ds.labels.tolist() == [0, 1, 2, 3, 9]


def test_cifar10_wrong_length(tmp_path):
    (tmp_path / "data_batch_1.bin").write_bytes(b"\0" * 3000)
    with pytest.raises(DataError, match="not a whole number of 3073-byte"):
        load_data(f"cifar10:{tmp_path}")


def test_check_fits(tiny_npz):
    ds = load_data(f"npz:{tiny_npz}")
    with pytest.raises(DataError, match=r"images are 3x12x10 .* expects 1x12x10"):
        check_fits(ds, (1, 12, 10), 3)
    with pytest.raises(DataError, match="label 2 is outside the model's 2 classes"):
        check_fits(ds, (3, 12, 10), 2)
