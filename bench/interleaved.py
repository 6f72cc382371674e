"""Batch-1 latency of several artifacts measured interleaved: one run of each in turn, on the
same seeded images, so machine noise hits all alike (what a ratio of two latencies needs on a
shared 2-core machine). The runtime, delegate and threads are those of `edgepack run`'s
validator (runtime_check).

    .venv/bin/python bench/interleaved.py dense/model.fp32.tflite best/model.int8.tflite
    .venv/bin/python bench/interleaved.py A.tflite B.onnx --threads 2 --runs 2000

Prints p50/p90 per artifact and each one's speed-up (p50) over the first.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run import _latency  # noqa: E402

from runtime_check.runtimes import open_session  # noqa: E402


def _images(shape: list[int], n: int) -> np.ndarray:
    """Seeded standard-normal images in the artifact's float input layout (NCHW for the
    latency helper, which transposes NHWC inputs itself)."""
    _, a, b, c = shape
    nchw = (c, a, b) if c in (1, 3) else (a, b, c)
    return np.random.default_rng(0).standard_normal((n, *nchw)).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifacts", nargs="+", type=Path)
    ap.add_argument("--runs", type=int, default=1000, help="timed runs of each artifact")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--delegate", default="xnnpack")
    args = ap.parse_args()
    sessions = {str(p): open_session(p, args.threads, args.delegate) for p in args.artifacts}
    first = next(iter(sessions.values()))
    x = _images(first.input.shape, 64)
    layouts = {
        k: "nhwc" if s.input.shape[-1] == x.shape[1] else "nchw" for k, s in sessions.items()
    }
    for k, s in sessions.items():
        if s.input.dtype != "float32":
            sys.exit(f"{k}: input {s.input.dtype}; this bench feeds float32 images")
    block = 1 if args.threads == 1 else 25
    result = _latency(sessions, x, layouts, args.runs, block)
    base = result[str(args.artifacts[0])][0]
    print(f"{'artifact':60s} {'p50 ms':>9s} {'p90 ms':>9s} {'speed-up':>9s}")
    for k, (p50, p90) in result.items():
        print(f"{k[-60:]:60s} {p50:9.3f} {p90:9.3f} {base / p50:8.2f}x")
    print(f"({args.runs} runs each, interleaved, {args.threads} thread(s), {args.delegate})")


if __name__ == "__main__":
    main()
