"""``python -m runtime_check --batch eval_batch.npz [--] ARTIFACT...`` prints one JSON result.

argparse, not click: the device may have nothing but numpy and a runtime.
"""

from __future__ import annotations

import argparse
import json
import sys

from runtime_check import check
from runtime_check.runtimes import ArtifactError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m runtime_check", description=__doc__)
    # Paths are taken as they are: a file name may hold any character (`@`, `:`), so nothing
    # about an artifact is ever encoded in its path. Put `--` before paths that start with `-`.
    p.add_argument("artifacts", nargs="+", help=".onnx / .tflite files")
    p.add_argument(
        "--batch", required=True, help="eval batch npz (inputs, labels, reference_logits)"
    )
    p.add_argument(
        "--layout",
        action="append",
        choices=("nchw", "nhwc"),
        help="input layout when the model's shape fits both: once for every artifact, or once "
        "per artifact in their order",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--delegate", choices=("xnnpack", "none"), default="xnnpack")
    p.add_argument(
        "--runtime",
        choices=("tflm",),
        help="tflm: run .tflite artifacts under TensorFlow Lite Micro (arena and flash "
        "measured, no latency)",
    )
    p.add_argument("--no-isolate", action="store_true", help="run all artifacts in this process")
    args = p.parse_args(argv)
    if args.threads < 1 or args.runs < 1 or args.warmup < 0:
        p.error("--threads and --runs must be >= 1, --warmup >= 0")
    layouts = args.layout or []
    if len(layouts) == 1:
        layouts = layouts * len(args.artifacts)
    if layouts and len(layouts) != len(args.artifacts):
        p.error(f"{len(layouts)} --layout for {len(args.artifacts)} artifacts: give 1 or one each")
    try:
        result = check(
            args.artifacts,
            args.batch,
            threads=args.threads,
            warmup=args.warmup,
            runs=args.runs,
            delegate=args.delegate,
            isolate=not args.no_isolate,
            layouts=layouts or None,
            runtime=args.runtime,
        )
    except (OSError, ValueError, ArtifactError) as exc:
        print(f"runtime_check: error: {exc}", file=sys.stderr)
        return 2
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0 if all(r["status"] != "error" for r in result["results"]) else 1


if __name__ == "__main__":
    sys.exit(main())
