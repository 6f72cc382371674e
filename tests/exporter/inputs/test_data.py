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


# ---------------------------------------------------------------- accepted pixel types (#14)


def _npz(tmp_path, images, labels=None, **extra):
    path = tmp_path / "d.npz"
    labels = np.arange(len(images)) % 2 if labels is None else labels
    np.savez(path, images=images, labels=labels, **extra)
    return f"npz:{path}"


@pytest.mark.parametrize("dtype", [np.int64, np.uint16, np.int16, np.float32, np.float64])
def test_npz_pixels_within_0_255_convert_exactly(tmp_path, dtype):
    pixels = np.arange(256, dtype=np.int64).reshape(4, 8, 8, 1)
    ds = load_data(_npz(tmp_path, pixels.astype(dtype)))
    assert ds.images.dtype == np.uint8
    assert np.array_equal(ds.images.astype(np.int64), pixels)


@pytest.mark.parametrize(
    "images, match",
    [
        (np.linspace(0, 1, 4 * 64, dtype=np.float32), r"float32 in \[0, 1\]: a 0..1 scale"),
        (np.zeros(4 * 64, np.float64), r"float64 in \[0, 0\]: a 0..1 scale"),
        (np.linspace(0, 200, 4 * 64) + 0.25, r"float64 in \[0.25, 200.25\] with fractional"),
        (np.arange(4 * 64, dtype=np.uint16) * 200, r"uint8 pixels 0..255 \(got uint16 in \[0, "),
        (np.arange(4 * 64, dtype=np.int32) - 1, r"got int32 in \[-1, 254\]"),
        (np.ones(4 * 64, bool), "images are bool"),
    ],
)
def test_npz_pixels_that_would_need_a_guess_are_refused(tmp_path, images, match):
    with pytest.raises(DataError, match=match) as err:
        load_data(_npz(tmp_path, images.reshape(4, 8, 8, 1)))
    assert "d.npz" in str(err.value)


def test_npz_string_labels_are_class_names(tmp_path):
    images = np.zeros((5, 4, 4, 1), np.uint8)
    labels = np.array(["dog", "cat", "emu", "cat", "dog"])
    ds = load_data(_npz(tmp_path, images, labels))
    assert ds.classes == ("cat", "dog", "emu") and ds.named_classes  # sorted, like imagefolder
    assert ds.labels.tolist() == [1, 0, 2, 0, 1]
    # With a `classes` array, its order is the class index.
    ds = load_data(_npz(tmp_path, images, labels, classes=np.array(["emu", "dog", "cat"])))
    assert ds.labels.tolist() == [1, 2, 0, 2, 1]
    ds = load_data(_npz(tmp_path, images, labels.astype("S")))
    assert ds.labels.tolist() == [1, 0, 2, 0, 1]
    with pytest.raises(DataError, match=r"label 'emu' is not in classes \[cat, dog\]"):
        load_data(_npz(tmp_path, images, labels, classes=np.array(["cat", "dog"])))


@pytest.mark.parametrize(
    "labels, extra, match",
    [
        (np.array([0.0, 1.5, 1, 0]), {}, r"labels must be integers \(got float64"),
        (np.array([True, False, True, False]), {}, "integers or class-name strings, got bool"),
        (np.array([0, 3, 1, 0]), {"classes": np.array(["a", "b"])}, r"label 3 but only 2 class"),
        (np.array([0, 1, 1, 0]), {"classes": np.array(["a", "a"])}, "class name.* a given more"),
    ],
)
def test_npz_bad_labels_are_named(tmp_path, labels, extra, match):
    with pytest.raises(DataError, match=match):
        load_data(_npz(tmp_path, np.zeros((4, 4, 4, 1), np.uint8), labels, **extra))


def test_npz_without_classes_is_matched_by_index(tmp_path):
    ds = load_data(_npz(tmp_path, np.zeros((4, 4, 4, 1), np.uint8), np.array([0, 1, 2, 1])))
    assert not ds.named_classes and ds.classes == ("0", "1", "2")
    # Integer labels may leave a model's last classes without images; named classes may not.
    check_fits(ds, (1, 4, 4), 10)
    named = load_data(_npz(tmp_path, np.zeros((4, 4, 4, 1), np.uint8), np.array(["a", "b"] * 2)))
    with pytest.raises(DataError, match=r"outputs 10 class scores but .* 2 classes \[a, b\]"):
        check_fits(named, (1, 4, 4), 10)


# ------------------------------------------------------- imagefolder modes, from the whole folder


def _png16(path, width: int, height: int, colour_type: int, raw_rows: bytes) -> None:
    """A 16-bit PNG written by hand: PIL cannot write 16-bit RGB."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw_rows))
        + chunk(b"IEND", b"")
    )


def _two_classes(tmp_path):
    root = tmp_path / "f"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    return root


def test_imagefolder_gray_first_then_colour_is_rgb_losslessly(tmp_path):
    root = _two_classes(tmp_path)
    gray = np.arange(30, dtype=np.uint8).reshape(5, 6)
    colour = np.random.default_rng(0).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    Image.fromarray(gray, "L").save(root / "a" / "0.png")  # sorted first
    Image.fromarray(colour, "RGB").save(root / "b" / "0.png")
    rgba = np.dstack([colour, np.full((5, 6), 255, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(root / "b" / "1.png")  # opaque: alpha dropped
    Image.fromarray(gray > 10).save(root / "a" / "2.png")  # 1-bit
    ds = load_data(f"imagefolder:{root}")
    assert ds.images.shape == (4, 5, 6, 3)
    assert all(np.array_equal(ds.images[0][..., c], gray) for c in range(3))
    assert all(np.array_equal(ds.images[1][..., c], (gray > 10) * 255) for c in range(3))
    assert np.array_equal(ds.images[2], colour) and np.array_equal(ds.images[3], colour)


def test_imagefolder_all_gray_stays_one_channel(tmp_path):
    root = _two_classes(tmp_path)
    gray = np.arange(30, dtype=np.uint8).reshape(5, 6)
    Image.fromarray(gray, "L").save(root / "a" / "0.png")
    Image.fromarray(np.dstack([gray, np.full_like(gray, 255)]), "LA").save(root / "b" / "0.png")
    palette = Image.fromarray(gray, "L").convert("P")
    palette.save(root / "b" / "1.png")
    ds = load_data(f"imagefolder:{root}")
    # A palette image is colour to PIL: the folder becomes RGB, the pixels exact.
    assert ds.images.shape == (3, 5, 6, 3)
    for i in range(3):
        assert all(np.array_equal(ds.images[i][..., c], gray) for c in range(3))
    (root / "b" / "1.png").unlink()
    ds = load_data(f"imagefolder:{root}")
    assert ds.images.shape == (2, 5, 6, 1) and np.array_equal(ds.images[1, ..., 0], gray)


@pytest.mark.parametrize(
    "write, match",
    [
        (
            lambda p: Image.fromarray(np.full((5, 6), 40000, np.uint16)).save(p),
            r"x.png: a 16-bit or wider image \(mode I;16\)",
        ),
        (
            lambda p: _png16(p, 6, 5, 2, (b"\0" + b"\x9c\x40" * 18) * 5),
            r"x.png: a 16-bit or wider image \(mode RGB\)",
        ),
        (
            lambda p: Image.fromarray(
                np.dstack([np.zeros((5, 6, 3), np.uint8), np.full((5, 6), 254, np.uint8)]), "RGBA"
            ).save(p),
            r"x.png: RGBA image with transparent pixels \(alpha down to 254\)",
        ),
        (
            lambda p: Image.fromarray(np.zeros((5, 6), np.float32), "F").save(
                p.with_suffix(".tif")
            ),
            r"x.tif: a 16-bit or wider image \(mode F\)",
        ),
        (
            lambda p: Image.new("CMYK", (6, 5)).save(p.with_suffix(".jpg")),
            r"x.jpg: mode CMYK images are not read",
        ),
    ],
)
def test_imagefolder_lossy_images_are_refused_by_name(tmp_path, write, match):
    root = _two_classes(tmp_path)
    for cls in ("a", "b"):
        Image.fromarray(np.zeros((5, 6), np.uint8)).save(root / cls / "0.png")
    write(root / "b" / "x.png")
    with pytest.raises(DataError, match=match):
        load_data(f"imagefolder:{root}")
