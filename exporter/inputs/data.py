"""Data sets as uint8 images [N,H,W,C] with integer labels, and their preprocessing.

Sources: ``digits`` (the UCI handwritten digits, shipped in ``datasets/digits.npz``), ``npz:PATH``,
``imagefolder:DIR`` and ``cifar10:DIR`` (the CIFAR-10 *binary* batches: user files are never
unpickled).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from exporter.errors import DataError, InputFileError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
CIFAR_RECORD = 1 + 32 * 32 * 3


@dataclass(frozen=True)
class Dataset:
    images: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray  # int64 [N]
    classes: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) as the model sees it."""
        _, h, w, c = self.images.shape
        return c, h, w

    def subset(self, index: np.ndarray, source: str) -> Dataset:
        return Dataset(self.images[index], self.labels[index], self.classes, source)


@dataclass(frozen=True)
class Normalization:
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str  # "data statistics of <spec>" or "user"

    def apply(self, images: np.ndarray) -> np.ndarray:
        """uint8 NHWC -> float32 NCHW: /255, then (x - mean) / std per channel."""
        x = images.astype(np.float32) / 255.0
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def channel_stats(ds: Dataset) -> Normalization:
    x = ds.images.reshape(-1, ds.images.shape[-1]).astype(np.float64) / 255.0
    std = np.maximum(x.std(axis=0), 1e-6)
    return Normalization(
        tuple(float(v) for v in x.mean(axis=0)),
        tuple(float(v) for v in std),
        f"statistics of {ds.source}",
    )


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
            classes = tuple(str(c) for c in z["classes"]) if "classes" in z else None
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise InputFileError(f"{path}: not a readable .npz file ({exc})") from None
    except ValueError as exc:  # object arrays need pickle, which we never allow
        raise DataError(f"{path}: unsupported array ({exc})") from None
    if images.ndim == 3:  # [N,H,W] grayscale
        images = images[..., None]
    if images.dtype != np.uint8:
        if not np.issubdtype(images.dtype, np.number):
            raise DataError(f"{path}: images must be numeric, got {images.dtype}")
        if not np.isfinite(images).all():
            raise DataError(f"{path}: images contain NaN or Inf")
        if images.min() < 0 or images.max() > 255:
            raise DataError(
                f"{path}: images must be uint8 pixels 0..255 "
                f"(got {images.dtype} in [{images.min()}, {images.max()}])"
            )
        images = images.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer) and (
        not np.isfinite(labels).all() or np.any(labels != np.round(labels))
    ):
        raise DataError(f"{path}: labels must be integers")
    labels = labels.astype(np.int64).reshape(-1)
    if classes is None:
        n = int(labels.max()) + 1 if labels.size else 0
        classes = tuple(str(i) for i in range(n))
    return Dataset(images, labels, classes, f"npz:{path}")


def _load_imagefolder(root: Path) -> Dataset:
    from PIL import Image, UnidentifiedImageError

    if not root.is_dir():
        raise InputFileError(f"image folder {root} not found")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class subfolders")
    images, labels, size, mode = [], [], None, None
    for label, name in enumerate(classes):
        for file in sorted((root / name).iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(file) as im:
                    if mode is None:
                        mode = "L" if im.mode in ("L", "1", "I;16", "I") else "RGB"
                    arr = np.asarray(im.convert(mode))
            except (UnidentifiedImageError, OSError) as exc:
                raise DataError(f"corrupt image {file}: {exc}") from None
            if size is None:
                size = arr.shape[:2]
            elif arr.shape[:2] != size:
                raise DataError(
                    f"{file}: size {arr.shape[1]}x{arr.shape[0]} differs from "
                    f"the first image's {size[1]}x{size[0]}"
                )
            images.append(arr if arr.ndim == 3 else arr[..., None])
            labels.append(label)
    if not images:
        raise DataError(f"{root}: no images found")
    return Dataset(
        np.stack(images).astype(np.uint8),
        np.asarray(labels, np.int64),
        tuple(classes),
        f"imagefolder:{root}",
    )


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
    classes = (
        tuple(line.strip() for line in meta.read_text().splitlines() if line.strip())
        if meta.is_file()
        else tuple(str(i) for i in range(10))
    )
    return Dataset(
        np.ascontiguousarray(images), rec[:, 0].astype(np.int64), classes, f"cifar10:{root}"
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
    """Images must match the model's (C,H,W) and labels its class count."""
    if ds.image_shape != tuple(shape):
        c, h, w = shape
        dc, dh, dw = ds.image_shape
        raise DataError(
            f"{ds.source}: images are {dc}x{dh}x{dw} (CxHxW) but the model expects {c}x{h}x{w}"
        )
    top = int(ds.labels.max())
    if top >= num_classes:
        raise DataError(f"{ds.source}: label {top} is outside the model's {num_classes} classes")
