"""Write exporter/inputs/datasets/digits.npz from scikit-learn's copy of the UCI digits.

Run once by a developer (``pip install scikit-learn``, then ``python scripts/make_digits_npz.py``);
edgepack itself never imports scikit-learn. The file keeps the published 8x8 pixel counts
(0..16) and labels in sklearn's order; ``exporter.inputs.data`` scales them to uint8 on load.
The zip entries get a fixed timestamp so that the same arrays always give the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

OUT = Path(__file__).resolve().parent.parent / "exporter" / "inputs" / "datasets" / "digits.npz"


def _entry(zf: zipfile.ZipFile, name: str, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
    info = zipfile.ZipInfo(f"{name}.npy", date_time=(1998, 7, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    zf.writestr(info, buf.getvalue(), compresslevel=9)


def main() -> None:
    bunch = load_digits()
    images = bunch.images
    if images.min() < 0 or images.max() > 16 or not np.array_equal(images, np.round(images)):
        raise SystemExit("sklearn's digits are no longer integer counts in 0..16")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(OUT, "w") as zf:
        _entry(zf, "images", images.astype(np.uint8))
        _entry(zf, "labels", bunch.target.astype(np.uint8))
    digest = hashlib.sha256(OUT.read_bytes()).hexdigest()
    print(f"{OUT}: {OUT.stat().st_size:,} bytes, sha256 {digest}")


if __name__ == "__main__":
    main()
