"""Data sets as uint8 images [N,H,W,C] with integer labels, and their preprocessing.

Sources: ``digits`` (the UCI handwritten digits, shipped in ``datasets/digits.npz``), ``npz:PATH``,
``imagefolder:DIR`` and ``cifar10:DIR`` (the CIFAR-10 *binary* batches: user files are never
unpickled).

What is accepted. Pixels are 8-bit, 0..255; a conversion happens only where it loses nothing, and
anything else is refused with the file, the type and the range it has:

- ``npz`` ``images`` [N,H,W] or [N,H,W,C] with C in 1, 3, 4: uint8 as is; any other integer
  type when every value is within 0..255; a float type when every value is a whole number within
  0..255 and one at least is above 1 (pixels stored as floats). A 0..1 scale is never guessed:
  float images within [0, 1] are refused (a 0..1 scale and the pixel values 0 and 1 look alike),
  as are fractional values (they have no exact 8-bit pixel), NaN and Inf.
- ``npz`` ``labels``: integers >= 0 (or floats holding whole numbers), or strings. String labels
  are class names: each is mapped to its index in ``classes`` when the file has that array (a
  label not in it is refused), else to its place among the sorted distinct labels, the way
  ``imagefolder`` sorts its folders. ``classes`` (optional, distinct) names label 0, 1, ...
- ``imagefolder`` one subfolder per class, the sorted folder names being the classes, 8-bit
  images. The whole folder decides the channels: grayscale when every image is grayscale (L or
  1-bit), else RGB, a grayscale image being replicated into the three channels. Palette images
  are expanded; an alpha channel is dropped only where every pixel is opaque. Refused, naming the
  file: 16-bit PNGs and 16/32-bit or float images (modes I;16, I, F), transparent pixels, other
  modes (CMYK, YCbCr, LAB, HSV, ...), and a size that differs from the first image's.
- ``cifar10`` class names from ``batches.meta.txt`` when it is there.

Class names are *named* (``Dataset.named_classes``) when they come from the data (digits,
imagefolder, an npz with ``classes`` or string labels, CIFAR-10 with its meta file); data that
only has integer labels is matched to a model and to other data by label index alone.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from exporter.errors import DataError, InputFileError
from runtime_check.batch import normalize

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
CIFAR_RECORD = 1 + 32 * 32 * 3


@dataclass(frozen=True)
class Dataset:
    images: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray  # int64 [N]
    classes: tuple[str, ...]
    source: str
    # True when the class names come from the data, False when they are the label indices.
    named_classes: bool = True

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) as the model sees it."""
        _, h, w, c = self.images.shape
        return c, h, w

    def subset(self, index: np.ndarray, source: str) -> Dataset:
        return Dataset(
            self.images[index], self.labels[index], self.classes, source, self.named_classes
        )


@dataclass(frozen=True)
class Normalization:
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str  # "data statistics of <spec>" or "user"

    def apply(self, images: np.ndarray) -> np.ndarray:
        """uint8 NHWC -> float32 NCHW: /255, then (x - mean) / std per channel (the function
        runtime_check preprocesses the eval batch with on the device: the same bits)."""
        return normalize(images, self.mean, self.std)


def channel_stats(ds: Dataset) -> Normalization:
    """Per-channel mean and std of the pixels / 255, from exact integer sums: no float copy of
    the data set (a float64 copy of CIFAR-10's training set alone is 1.2 GB)."""
    channels = ds.images.shape[-1]
    pixels = ds.images.reshape(-1, channels)
    n = len(pixels)
    s1 = [0] * channels
    s2 = [0] * channels
    for i in range(0, n, 1 << 20):
        chunk = pixels[i : i + (1 << 20)].astype(np.int64)
        for c in range(channels):
            s1[c] += int(chunk[:, c].sum())
            s2[c] += int((chunk[:, c] * chunk[:, c]).sum())
    mean = [s / n / 255.0 for s in s1]
    # Population variance n*S2 - S1^2 in integers (exact), scaled once.
    std = [
        max(math.sqrt((n * b - a * a) / (n * n)) / 255.0, 1e-6) for a, b in zip(s1, s2, strict=True)
    ]
    return Normalization(tuple(mean), tuple(std), f"statistics of {ds.source}")


def load_data(spec: str) -> Dataset:
    """Load a data set from its spec string (see module docstring)."""
    kind, _, arg = spec.partition(":")
    if kind == "digits" and not arg:
        ds = _load_digits()
    elif kind == "npz" and arg:
        ds = _load_npz(Path(arg))
    elif kind == "imagefolder" and arg:
        ds = _load_imagefolder(Path(arg))
    elif kind == "cifar10" and arg:
        ds = _load_cifar10_binary(Path(arg))
    else:
        raise DataError(
            f"unknown data spec '{spec}' (use digits, npz:PATH, imagefolder:DIR or cifar10:DIR)"
        )
    return _validated(ds)


def format_classes(classes: tuple[str, ...] | list[str], limit: int = 12) -> str:
    """``[a, b, c]``; a long list shows its first ``limit`` names and its length."""
    names = [str(c) for c in classes]
    if len(names) <= limit:
        return f"[{', '.join(names)}]"
    return f"[{', '.join(names[:limit])}, ... ({len(names)} classes)]"


def _validated(ds: Dataset) -> Dataset:
    if len(ds) == 0:
        raise DataError(f"{ds.source}: the data set is empty")
    if ds.images.ndim != 4 or ds.images.shape[-1] not in (1, 3, 4):
        raise DataError(
            f"{ds.source}: images must be [N,H,W,C] with C in 1,3,4, "
            f"got shape {list(ds.images.shape)}"
        )
    if ds.labels.shape != (len(ds),):
        raise DataError(
            f"{ds.source}: {len(ds)} images but labels of shape {list(ds.labels.shape)}"
        )
    if ds.labels.min() < 0:
        raise DataError(f"{ds.source}: negative label {int(ds.labels.min())}")
    top = int(ds.labels.max())
    if ds.named_classes and top >= len(ds.classes):
        raise DataError(
            f"{ds.source}: label {top} but only {len(ds.classes)} class names "
            f"{format_classes(ds.classes)}"
        )
    if len(set(ds.classes)) != len(ds.classes):
        twice = sorted({c for c in ds.classes if ds.classes.count(c) > 1})
        raise DataError(f"{ds.source}: class name(s) {', '.join(twice)} given more than once")
    return ds


def _load_digits() -> Dataset:
    # Written by scripts/make_digits_npz.py; attribution in datasets/README.md.
    shipped = resources.files(__package__) / "datasets" / "digits.npz"
    with shipped.open("rb") as fh, np.load(fh, allow_pickle=False) as z:
        counts, labels = z["images"], z["labels"]
    # The published digits are 8x8 counts in 0..16; scale them to the full uint8 range.
    images = np.round(counts * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return Dataset(images, labels.astype(np.int64), tuple(str(c) for c in range(10)), "digits")


def _load_npz(path: Path) -> Dataset:
    if not path.is_file():
        raise InputFileError(f"data file {path} not found")
    with path.open("rb") as fh:
        if fh.read(4) != b"PK\x03\x04":  # np.load would try to unpickle anything else
            raise InputFileError(f"{path}: not a readable .npz file (not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "images" not in z or "labels" not in z:
                raise DataError(f"{path}: needs arrays 'images' and 'labels', has {sorted(z)}")
            images, labels = z["images"], z["labels"]
            classes = tuple(str(c) for c in z["classes"].reshape(-1)) if "classes" in z else None
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise InputFileError(f"{path}: not a readable .npz file ({exc})") from None
    except ValueError as exc:  # object arrays need pickle, which we never allow
        raise DataError(f"{path}: unsupported array ({exc})") from None
    if images.ndim == 3:  # [N,H,W] grayscale
        images = images[..., None]
    images = _npz_pixels(images, path)
    labels, classes = _npz_labels(labels, classes, path)
    named = classes is not None
    if classes is None:
        n = int(labels.max()) + 1 if labels.size else 0
        classes = tuple(str(i) for i in range(n))
    return Dataset(images, labels, classes, f"npz:{path}", named)


def _range(a: np.ndarray) -> str:
    lo, hi = a.min(), a.max()
    return f"{a.dtype} in [{lo:g}, {hi:g}]" if a.dtype.kind == "f" else f"{a.dtype} in [{lo}, {hi}]"


def _npz_pixels(images: np.ndarray, path: Path) -> np.ndarray:
    """uint8 as is; integers within 0..255 and whole-number floats within 0..255 exactly."""
    if images.dtype == np.uint8:
        return images
    if images.dtype.kind not in "iuf":
        raise DataError(
            f"{path}: images are {images.dtype}; edgepack takes uint8 pixels 0..255 "
            "(or integers or whole-number floats within 0..255)"
        )
    if images.size == 0:
        return images.astype(np.uint8)
    if images.dtype.kind == "f" and not np.isfinite(images).all():
        raise DataError(f"{path}: images contain NaN or Inf")
    if images.min() < 0 or images.max() > 255:
        raise DataError(f"{path}: images must be uint8 pixels 0..255 (got {_range(images)})")
    if images.dtype.kind == "f":
        if images.max() <= 1:
            raise DataError(
                f"{path}: images are {_range(images)}: a 0..1 scale is not guessed; save "
                "pixels 0..255 as uint8 (np.round(images * 255).astype(np.uint8))"
            )
        if np.any(images != np.round(images)):
            raise DataError(
                f"{path}: images are {_range(images)} with fractional values; pixels must be "
                "whole numbers 0..255 (uint8)"
            )
    return images.astype(np.uint8)


def _npz_labels(
    labels: np.ndarray, classes: tuple[str, ...] | None, path: Path
) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """Integer labels, or string labels mapped to class indices; returns (labels, classes)."""
    kind = labels.dtype.kind
    if kind in "US":
        return _named_labels(labels, classes, path)
    if (
        kind == "f"
        and labels.size
        and (not np.isfinite(labels).all() or np.any(labels != np.round(labels)))
    ):
        raise DataError(f"{path}: labels must be integers (got {_range(labels)})")
    if kind not in "iuf":
        raise DataError(
            f"{path}: labels must be integers or class-name strings, got {labels.dtype}"
        )
    return labels.astype(np.int64).reshape(-1), classes


def _named_labels(
    labels: np.ndarray, classes: tuple[str, ...] | None, path: Path
) -> tuple[np.ndarray, tuple[str, ...]]:
    try:
        names, inverse = np.unique(labels.astype(str).reshape(-1), return_inverse=True)
    except UnicodeDecodeError:
        raise DataError(f"{path}: labels are bytes that are not text") from None
    if classes is None:
        classes = tuple(str(n) for n in names)  # np.unique sorts them
    index = {name: i for i, name in enumerate(classes)}
    unknown = [str(n) for n in names if str(n) not in index]
    if unknown:
        more = f" ({len(unknown)} such labels)" if len(unknown) > 1 else ""
        raise DataError(
            f"{path}: label {unknown[0]!r} is not in classes {format_classes(classes)}{more}"
        )
    lookup = np.array([index[str(n)] for n in names], np.int64)
    return lookup[inverse.reshape(-1)], classes


def _load_imagefolder(root: Path) -> Dataset:
    if not root.is_dir():
        raise InputFileError(f"image folder {root} not found")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class subfolders")
    images: list[np.ndarray] = []
    labels: list[int] = []
    first: Path | None = None
    for label, name in enumerate(classes):
        for file in sorted((root / name).iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            arr = _read_image(file)
            if first is None:
                first = file
            elif arr.shape[:2] != images[0].shape[:2]:
                (h, w), (fh, fw) = arr.shape[:2], images[0].shape[:2]
                raise DataError(
                    f"{file}: size {w}x{h} differs from the first image's {fw}x{fh} ({first})"
                )
            images.append(arr)
            labels.append(label)
    if not images:
        raise DataError(f"{root}: no images found")
    # One colour image makes the folder RGB: replicating a grayscale image loses nothing.
    colour = any(a.ndim == 3 for a in images)
    stacked = np.stack([_channels(a, 3 if colour else 1) for a in images])
    return Dataset(stacked, np.asarray(labels, np.int64), tuple(classes), f"imagefolder:{root}")


def _channels(arr: np.ndarray, c: int) -> np.ndarray:
    if arr.ndim == 3:
        return arr
    return np.repeat(arr[..., None], c, axis=-1)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_DEEP_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}


def _png_bit_depth(file: Path) -> int | None:
    """The bit depth in a PNG's header: PIL reads a 16-bit RGB PNG as 8-bit RGB, saying nothing."""
    with file.open("rb") as fh:
        head = fh.read(26)
    if len(head) == 26 and head[:8] == _PNG_SIGNATURE and head[12:16] == b"IHDR":
        return head[24]
    return None


def _read_image(file: Path) -> np.ndarray:
    """One image file as uint8 [H,W] (grayscale) or [H,W,3] (colour), converted losslessly."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as im:
            if im.mode in _DEEP_MODES or _png_bit_depth(file) == 16:
                raise DataError(
                    f"{file}: a 16-bit or wider image (mode {im.mode}); edgepack reads 8-bit "
                    "images only: save it with 8 bits per channel"
                )
            if im.mode in ("1", "L"):
                return np.asarray(im.convert("L"))
            if im.mode == "RGB":
                return np.asarray(im)
            if im.mode in ("P", "PA", "RGBA"):
                return _opaque(np.asarray(im.convert("RGBA")), file, im.mode)
            if im.mode == "LA":
                return _opaque(np.asarray(im), file, im.mode)
            raise DataError(
                f"{file}: mode {im.mode} images are not read; edgepack takes 8-bit grayscale, "
                "RGB, palette and opaque RGBA images"
            )
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"corrupt image {file}: {exc}") from None


def _opaque(arr: np.ndarray, file: Path, mode: str) -> np.ndarray:
    """Drop the alpha channel of [H,W,2|4] pixels, refusing the image if one is not opaque."""
    alpha = arr[..., -1]
    if alpha.min() < 255:
        raise DataError(
            f"{file}: {mode} image with transparent pixels (alpha down to {alpha.min()}); "
            "edgepack takes opaque images: flatten it onto a background first"
        )
    rest = arr[..., :-1]
    return rest[..., 0] if rest.shape[-1] == 1 else rest


def _load_cifar10_binary(root: Path) -> Dataset:
    if not root.is_dir():
        raise InputFileError(f"CIFAR-10 folder {root} not found")
    files = sorted(root.glob("data_batch_*.bin")) or sorted(root.glob("*.bin"))
    files = [f for f in files if f.name != "batches.meta.txt"]
    if not files:
        raise DataError(f"{root}: no CIFAR-10 binary batches (*.bin)")
    chunks = []
    for f in files:
        raw = np.fromfile(f, dtype=np.uint8)
        if raw.size == 0 or raw.size % CIFAR_RECORD:
            raise DataError(
                f"{f}: {raw.size} bytes is not a whole number of "
                f"{CIFAR_RECORD}-byte CIFAR-10 records"
            )
        chunks.append(raw.reshape(-1, CIFAR_RECORD))
    rec = np.concatenate(chunks)
    images = rec[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    meta = root / "batches.meta.txt"
    named = meta.is_file()
    classes = (
        tuple(line.strip() for line in meta.read_text().splitlines() if line.strip())
        if named
        else tuple(str(i) for i in range(10))
    )
    return Dataset(
        np.ascontiguousarray(images),
        rec[:, 0].astype(np.int64),
        classes,
        f"cifar10:{root}",
        named,
    )


def stratified_split(ds: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Fixed, seeded split keeping each class's share: (train, holdout)."""
    rng = np.random.default_rng(seed)
    hold: list[np.ndarray] = []
    for label in np.unique(ds.labels):
        idx = np.flatnonzero(ds.labels == label)
        rng.shuffle(idx)
        # Every class with two or more images gets at least one in the hold-out.
        take = int(round(len(idx) * fraction))
        hold.append(idx[: max(take, 1 if len(idx) >= 2 else 0)])
    hold_idx = np.sort(np.concatenate(hold))
    mask = np.ones(len(ds), bool)
    mask[hold_idx] = False
    train_idx = np.flatnonzero(mask)
    if len(train_idx) == 0 or len(hold_idx) == 0:
        raise DataError(f"{ds.source}: {len(ds)} images are too few to hold out {fraction:.0%}")
    return (
        ds.subset(train_idx, f"{ds.source} (train split)"),
        ds.subset(hold_idx, f"{ds.source} (hold-out {fraction:.0%}, seed {seed})"),
    )


def check_fits(ds: Dataset, shape: tuple[int, int, int], num_classes: int) -> None:
    """Images must match the model's (C,H,W); named classes its output width, labels its class
    count (data with integer labels only may leave the model's last classes without images)."""
    if ds.image_shape != tuple(shape):
        c, h, w = shape
        dc, dh, dw = ds.image_shape
        raise DataError(
            f"{ds.source}: images are {dc}x{dh}x{dw} (CxHxW) but the model expects {c}x{h}x{w}"
        )
    top = int(ds.labels.max())
    if top >= num_classes:
        raise DataError(f"{ds.source}: label {top} is outside the model's {num_classes} classes")
    if ds.named_classes and len(ds.classes) != num_classes:
        raise DataError(
            f"the model outputs {num_classes} class scores but {ds.source} has "
            f"{len(ds.classes)} classes {format_classes(ds.classes)}"
        )
