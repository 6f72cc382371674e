"""The precision menu side by side: fp32, fp16, dynamic, int8 and int16x8 in ONNX and TFLite.

One ``edgepack run`` (x86_64 recipe, no pruning, no fine-tuning: the precisions alone) writes
the ten artifacts and its report gives bytes, accuracy, drop against the torch fp32 model and
the ops LiteRT ran outside XNNPACK; this script then times all ten at batch 1, 1 thread,
interleaved in one process (bench/run.py's ``_latency``) so machine noise hits them alike, and
prints a markdown table.

    .venv/bin/python bench/precisions.py --model seed-cnn --weights W.pt --out /tmp/p
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import exporter  # noqa: E402
from bench.run import DEFAULT_DATA, _latency  # noqa: E402
from exporter.recipe import PRECISIONS  # noqa: E402
from runtime_check.batch import load_batch  # noqa: E402
from runtime_check.runtimes import open_session  # noqa: E402

FORMATS = ("onnx", "tflite")


def build(model: str, weights: str, data: str, out: Path, samples: int) -> dict:
    """The ten artifacts and their report, through the public API as a user would call it."""
    overrides = (
        f"export.precisions={json.dumps(list(PRECISIONS))}",
        f"export.formats={json.dumps(list(FORMATS))}",
        'export.storage=["dense"]',
        "compress.prune.sparsity=0",
        "compress.finetune.epochs=0",
        f"eval.samples={samples}",
        # Latency is measured below, interleaved; the run's own timing is not used.
        "runtime.runs=1",
        "runtime.warmup=0",
    )
    result = exporter.run(model, out, weights=weights, data=data, force=True, overrides=overrides)
    return result.report


def measure(out: Path, report: dict, runs: int) -> list[dict]:
    rows = {a["path"]: a for a in report["artifacts"]}
    x = load_batch(out / "eval_batch.npz")["inputs"][:256]
    c = x.shape[1]
    sessions, layouts = {}, {}
    for path in rows:
        sess = open_session(out / path, 1, "xnnpack")
        shape = sess.input.shape
        sessions[path] = sess
        layouts[path] = "nhwc" if shape[-1] == c and shape[1] != c else "nchw"
    lat = _latency(sessions, x, layouts, runs)
    table = []
    for p in PRECISIONS:
        for fmt in FORMATS:
            a = rows[f"model.{p}.{fmt}"]
            table.append(
                {
                    "precision": p,
                    "format": fmt,
                    "bytes": a["bytes"],
                    "accuracy": a["accuracy"],
                    "drop": a["accuracy_drop"],
                    "p50_ms": lat[a["path"]][0],
                    "p90_ms": lat[a["path"]][1],
                    "ops_outside_delegate": a.get("ops_outside_delegate"),
                    "status": a["status"],
                }
            )
    return table


def _coverage(row: dict) -> str:
    outside = row["ops_outside_delegate"]
    if row["format"] == "onnx":
        return "- (onnxruntime CPU EP)"
    if outside is None:
        return "not measured"
    if not outside:
        return "all ops"
    ops = sorted(set(outside))
    return f"{len(outside)} ops outside: {', '.join(ops)}"


def markdown(table: list[dict], reference: dict) -> str:
    lines = [
        f"torch fp32 reference: {reference['accuracy']:.2f} % on {reference['samples']} images",
        "",
        "| precision | format | bytes | accuracy % | drop (pts) | p50 ms, 1 thread | XNNPACK |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in table:
        lines.append(
            f"| {r['precision']} | {r['format']} | {r['bytes']:,} | {r['accuracy']:.2f} "
            f"| {r['drop']:+.2f} | {r['p50_ms']:.3f} | {_coverage(r)} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", required=True, help="built-in name, e.g. seed-cnn")
    p.add_argument("--weights", required=True, help="state_dict from `edgepack train`")
    p.add_argument("--data", default=f"npz:{DEFAULT_DATA}")
    p.add_argument("--out", type=Path, required=True, help="run output directory (replaced)")
    p.add_argument("--samples", type=int, default=2000, help="hold-out images evaluated")
    p.add_argument("--runs", type=int, default=300, help="timed runs per artifact")
    args = p.parse_args()
    report = build(args.model, args.weights, args.data, args.out, args.samples)
    table = measure(args.out, report, args.runs)
    (args.out / "precisions.json").write_text(
        json.dumps({"reference": report["reference"], "rows": table}, indent=2)
    )
    print(markdown(table, report["reference"]))


if __name__ == "__main__":
    main()
