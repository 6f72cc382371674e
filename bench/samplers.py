"""Which Optuna sampler `edgepack tune` should use: TPE, NSGA-II and random search at equal trials.

Each sampler runs the same size study (`--objective size`, the default search space) from
several seeds; after every trial the smallest *feasible* artifact found so far (tuning split,
every budget held) is recorded, and the table gives, per sampler, the median over seeds of that
best size after k trials and the number of feasible trials. The seed CNN trained on the
embedded digits set keeps a trial to seconds, so the comparison fits in minutes; trained
CIFAR weights can be given instead (`--weights`, `--data`), at minutes a trial.

    .venv/bin/python bench/samplers.py                       # digits, 3 seeds x 30 trials
    .venv/bin/python bench/samplers.py --seeds 0 1 --trials 20

Writes bench/samplers.json and the "## Samplers" section of bench/RESULTS.md (the rest kept).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results_md import replace_section

ROOT = Path(__file__).resolve().parent.parent
EDGEPACK = [str(Path(sys.executable).with_name("edgepack"))]  # the venv's console script
SAMPLERS = ("tpe", "nsga2", "random")
HEADING = "## Samplers"


def _edgepack(*args: object) -> None:
    subprocess.run([*EDGEPACK, *map(str, args)], cwd=ROOT, check=True, capture_output=True)


def train_digits(work: Path) -> Path:
    weights = work / "seed.pt"
    _edgepack("train", "--model", "seed-cnn", "--data", "digits", "--epochs", "4", "--out",
              weights, "-q")  # fmt: skip
    return weights


def study(args, weights: Path, sampler: str, seed: int, out: Path) -> dict:
    t0 = time.perf_counter()
    _edgepack(
        "tune", "--model", "seed-cnn", "--weights", weights, "--data", args.data,
        "--target", "x86_64", "--objective", "size", "--trials", args.trials,
        "--set", f'tune.sampler="{sampler}"', "--set", f"tune.seed={seed}",
        "--set", f"budgets.max_accuracy_drop={args.max_drop}",
        "--set", "runtime.runs=3", "--set", "runtime.warmup=1", "--out", out, "-q",
    )  # fmt: skip
    report = json.loads((out / "tune.json").read_text())
    best, curve = None, []
    for t in sorted(report["trials"], key=lambda t: t["number"]):
        if t["state"] == "COMPLETE" and t["feasible"] and t["tuning"]:
            size = t["tuning"]["bytes"]
            best = size if best is None else min(best, size)
        curve.append(best)
    return {
        "sampler": sampler,
        "seed": seed,
        "curve": curve,
        "feasible": sum(bool(t["feasible"]) for t in report["trials"]),
        "trials": len(report["trials"]),
        "chosen_eval_bytes": (report.get("best") or {}).get("bytes"),
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def _median_at(runs: list[dict], k: int) -> str:
    values = [r["curve"][k - 1] for r in runs if len(r["curve"]) >= k]
    found = [v for v in values if v is not None]
    if len(found) < len(values) or not values:
        return f"none in {len(values) - len(found)} of {len(values)}" if values else "–"
    return f"{statistics.median(found):,.0f}"


def markdown(rows: list[dict], args) -> str:
    ks = sorted({k for k in (5, 10, 20, 30, 50) if k < args.trials} | {args.trials})
    head = ["sampler", *[f"best B after {k}" for k in ks], "feasible trials", "wall s"]
    lines = [
        HEADING,
        "",
        f"`.venv/bin/python bench/samplers.py --trials {args.trials} --seeds "
        f"{' '.join(map(str, args.seeds))}` ({args.data}, seed CNN, x86_64, `--objective size`, "
        f"budget {args.max_drop} point; medians over the seeds of the smallest feasible "
        "artifact on the tuning split after k trials).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for sampler in args.samplers:
        runs = [r for r in rows if r["sampler"] == sampler]
        feas = ", ".join(str(r["feasible"]) for r in runs)
        walls = ", ".join(f"{r['wall_s']:.0f}" for r in runs)
        cells = [sampler, *[_median_at(runs, k) for k in ks], feas, walls]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samplers", nargs="*", default=list(SAMPLERS), choices=SAMPLERS)
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--weights", type=Path, help="trained seed CNN weights (default: digits)")
    p.add_argument("--data", default="digits")
    p.add_argument("--max-drop", type=float, default=1.0)
    p.add_argument(
        "--table-only", action="store_true", help="rewrite RESULTS.md from bench/samplers.json"
    )
    args = p.parse_args()
    if args.table_only:
        rows = json.loads((ROOT / "bench" / "samplers.json").read_text())
        replace_section(ROOT / "bench" / "RESULTS.md", HEADING, markdown(rows, args))
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgepack-samplers-") as tmp:
        work = Path(tmp)
        weights = args.weights or train_digits(work)
        for seed in args.seeds:
            for sampler in args.samplers:
                rows.append(study(args, weights, sampler, seed, work / f"{sampler}-{seed}"))
                print(json.dumps(rows[-1]), flush=True)
    (ROOT / "bench" / "samplers.json").write_text(json.dumps(rows, indent=2) + "\n")
    section = markdown(rows, args)
    replace_section(ROOT / "bench" / "RESULTS.md", HEADING, section)
    print(section)


if __name__ == "__main__":
    main()
