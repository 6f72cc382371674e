"""The eval batch (``eval_batch.npz``): what the device needs to reproduce the figures.

It holds the eval images as uint8 pixels (``images``, NHWC), the normalization (``mean``,
``std``, one value per channel), ``labels`` and the original model's ``reference_logits``; the
device preprocesses the pixels itself with :func:`normalize`, the very function the exporter
normalizes with, so the float inputs are the same bits on both sides — at a quarter of the
size of float32 copies. A batch written before (float32 ``inputs``, NCHW) is read as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

# One row per eval image in each of these arrays (a subset takes the same rows of each).
PER_IMAGE = ("images", "inputs", "labels", "reference_logits")


class BatchError(ValueError):
    """The eval batch cannot be read or lacks what the figures need."""


def normalize(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 NHWC -> float32 NCHW: /255, then (x - mean) / std per channel.

    Every step is a float32 operation (the mean and std are rounded to float32 first), so the
    result does not depend on numpy's scalar promotion rules (numpy 1 on a device, 2 here).
    """
    x = images.astype(np.float32) / np.float32(255.0)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def load_batch(path: str | Path) -> dict[str, np.ndarray]:
    """The eval batch with its float32 NCHW ``inputs`` decoded (once, for every artifact)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            batch = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as exc:
        raise BatchError(f"eval batch {path}: not a readable .npz file ({exc})") from None
    missing = {"labels", "reference_logits"} - set(batch)
    if "inputs" not in batch:
        missing |= {"images", "mean", "std"} - set(batch)
    if missing:
        raise BatchError(
            f"eval batch {path} lacks {', '.join(sorted(missing))} (it needs images, mean, "
            "std, labels and reference_logits, or float32 inputs from an older edgepack)"
        )
    if "inputs" not in batch:
        images = batch["images"]
        channels = images.shape[-1] if images.ndim == 4 else None
        if images.dtype != np.uint8 or channels is None:
            raise BatchError(f"eval batch {path}: images must be uint8 [N,H,W,C]")
        for key in ("mean", "std"):
            if batch[key].shape != (channels,):
                raise BatchError(
                    f"eval batch {path}: {key} has shape {list(batch[key].shape)} for "
                    f"{channels}-channel images"
                )
        batch["inputs"] = normalize(images, batch["mean"], batch["std"])
    return batch
