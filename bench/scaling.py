"""How `edgepack run`'s cost grows with the model: wall time per stage against params and MACs.

Each net runs the dense one-shot (no pruning, no fine-tuning; fp32 + int8, ONNX + TFLite,
validated on the x86_64 recipe) in a fresh process, ``--repeat`` times; the median whole-process
wall time, the stage times of that run and the peak RSS (the run and its validator children)
are kept. The nets span 0.3 M to 25 M parameters: the seed CNN and MobileNetV2-CIFAR on
CIFAR-10 (``../shared/data/cifar10/train.npz``; random weights when no trained weights are
given: the cost does not depend on them) and torchvision's ResNet-18, DenseNet-121 and
ResNet-50 on random 224x224 images (random initial weights). Writes bench/scaling.json and the
"Scaling" section of bench/RESULTS.md (the rest of that file is kept).

    .venv/bin/python bench/scaling.py                 # every net, median of 3
    .venv/bin/python bench/scaling.py --nets seed-cnn mobilenetv2-cifar --repeat 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from results_md import replace_section

ROOT = Path(__file__).resolve().parent.parent
CIFAR = ROOT.parent / "shared" / "data" / "cifar10" / "train.npz"
DENSE = (
    "compress.prune.sparsity=0",
    "compress.finetune.epochs=0",
    'export.storage=["dense"]',
)


# name -> (model spec, data: "cifar" or an image size for random images, eval images)
NETS: dict[str, tuple[str, object, int]] = {
    "seed-cnn": ("seed-cnn", "cifar", 2000),
    "mobilenetv2-cifar": ("mobilenetv2-cifar", "cifar", 2000),
    "resnet18-224": (f"{ROOT / 'bench' / 'scaling_nets.py'}:resnet18", 224, 500),
    "densenet121-224": (f"{ROOT / 'bench' / 'scaling_nets.py'}:densenet121", 224, 500),
    "resnet50-224": (f"{ROOT / 'bench' / 'scaling_nets.py'}:resnet50", 224, 500),
}
# Stages, as the pipeline's functions are named (timed by wrapping them in the child).
STAGES = {
    "load data": ("exporter.pipeline", "split_data"),
    "reference (torch)": ("exporter.pipeline", "_check_model_fits"),
    "compress + ONNX export": ("exporter.pipeline", "_compress_and_export"),
    "TFLite": ("exporter.pipeline", "_convert"),
    "int8 search": ("exporter.pipeline", "_quantize"),
    "validate": ("exporter.pipeline", "validate"),
    "report": ("exporter.pipeline", "write_html"),
}


def random_npz(path: Path, size: int, count: int, classes: int = 10) -> Path:
    """Random uint8 images and balanced labels: what the cost is measured on, not accuracy."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    np.savez(path, images=images, labels=np.arange(count) % classes)
    return path


def child(args: argparse.Namespace) -> None:
    """One run in this process, its stages timed; prints one JSON line."""
    import importlib

    sys.path.insert(0, str(ROOT))
    times: dict[str, float] = {}

    def timed(label, fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                times[label] = times.get(label, 0.0) + time.perf_counter() - t0

        return wrapper

    t_import = time.perf_counter()
    from exporter.pipeline import RunOptions, run

    imported = time.perf_counter() - t_import
    for label, (module, name) in STAGES.items():
        mod = importlib.import_module(module)
        setattr(mod, name, timed(label, getattr(mod, name)))
    opts = RunOptions(
        model=args.model,
        out=Path(args.out),
        weights=args.weights,
        data=args.data,
        overrides=tuple(args.set),
        quiet=True,
        force=True,
    )
    t0 = time.perf_counter()
    result = run(opts)
    total = time.perf_counter() - t0
    report = result.report
    export = report.get("export") or {}
    quant = report.get("quantization") or {}
    if export.get("seconds") is not None and "compress + ONNX export" in times:
        times["ONNX export (of it)"] = export["seconds"]
    print(
        json.dumps(
            {
                "import_s": imported,
                "run_s": total,
                "stages": times,
                "params": report["reference"].get("params"),
                "macs": report["reference"].get("macs"),
                "eval_images": report["data"]["eval_images"],
                "search_cost": quant.get("cost"),
                "export_cached": export.get("cached"),
                "eval_batch_bytes": (Path(args.out) / "eval_batch.npz").stat().st_size,
                "maxrss_self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


def measure(name: str, work: Path, repeat: int, weights: dict[str, str]) -> dict:
    spec, data, samples = NETS[name]
    if data == "cifar":
        data_spec = f"npz:{CIFAR}"
    else:
        # eval images held out (20 %) + calibration (256) + tuning images from the rest
        count = max(samples * 5, 1500)
        path = work / f"random{data}-{count}.npz"
        if not path.is_file():
            random_npz(path, int(data), count)
        data_spec = f"npz:{path}"
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--model",
        spec,
        "--data",
        data_spec,
        "--out",
        str(work / f"out-{name}"),
        *(["--weights", weights[name]] if name in weights else []),
        *[a for o in (*DENSE, f"eval.samples={samples}") for a in ("--set", o)],
    ]
    runs = []
    for _ in range(repeat):
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
            # wait4: this run's peak RSS, its validator children included (Linux folds the
            # peak of reaped descendants into the child's).
            _, _, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - t0
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read()
        children = usage.ru_maxrss / 1024
        lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
        if not lines:
            tail = (stderr.strip().splitlines() or ["no output"])[-1]
            runs.append({"wall_s": wall, "error": tail, "load": load})
            continue
        runs.append({**json.loads(lines[-1]), "wall_s": wall, "load": load, "rss_mb": children})
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"name": name, "error": runs[-1]["error"], "runs": runs}
    median = statistics.median(r["wall_s"] for r in ok)
    chosen = min(ok, key=lambda r: abs(r["wall_s"] - median))
    return {
        "name": name,
        "wall_s": median,
        "walls": [round(r["wall_s"], 1) for r in ok],
        "cached": [bool(r.get("export_cached")) for r in ok],
        "loads": [round(r["load"], 1) for r in runs],
        **{k: chosen[k] for k in chosen if k not in ("wall_s", "load")},
    }


def _walls(row: dict) -> str:
    """Every run's wall time, a * on those that found the ONNX export in the cache."""
    cached = row.get("cached") or [False] * len(row["walls"])
    return ", ".join(f"{w}{'*' if c else ''}" for w, c in zip(row["walls"], cached, strict=False))


def _fmt_s(v: float | None) -> str:
    return "–" if v is None else f"{v:.1f}"


def _search_cell(row: dict, count: str, seconds: str) -> str:
    """``seconds (count)`` of the int8 search's cost, e.g. tuning evaluations or images."""
    cost = row.get("search_cost") or {}
    return f"{cost[seconds]:.1f} ({cost[count]})" if cost else "–"


def table(rows: list[dict]) -> str:
    stages = [*STAGES, "ONNX export (of it)"]
    head = [
        "net",
        "params",
        "MMACs",
        "eval",
        "wall s (median)",
        "load",
        "import s",
        *stages,
        "int8: tuning evals s",
        "int8: sensitivity s",
        "peak RSS MB",
    ]
    lines = ["| " + " | ".join(head) + " | dominant stage |", "|" + "---|" * (len(head) + 1)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['name']} | failed: {r['error']} |" + " |" * len(head))
            continue
        st = r["stages"]
        main = [s for s in STAGES if s in st]
        dominant = max(main, key=lambda s: st[s]) if main else "–"
        share = st[dominant] / r["wall_s"] * 100 if main else 0
        cells = [
            r["name"],
            f"{(r['params'] or 0) / 1e6:.2f} M",
            f"{(r['macs'] or 0) / 1e6:,.0f}",
            str(r["eval_images"]),
            f"{r['wall_s']:.1f} ({_walls(r)})",
            ", ".join(map(str, r["loads"])),
            _fmt_s(r["import_s"]),
            *[_fmt_s(st.get(s)) for s in stages],
            _search_cell(r, "evaluations", "evaluation_seconds"),
            _search_cell(r, "sensitivity_images", "sensitivity_seconds"),
            f"{max(r['rss_mb'], r['maxrss_self_mb']):,.0f}",
        ]
        lines.append("| " + " | ".join(cells) + f" | {dominant} ({share:.0f} %) |")
    return "\n".join(lines)


def write_results(rows: list[dict], note: str) -> None:
    """bench/scaling.json and the Scaling section, with the rows of nets measured before and
    not now kept (a long net can be measured apart from the quick ones)."""
    path = ROOT / "bench" / "scaling.json"
    kept = json.loads(path.read_text()) if path.is_file() else []
    fresh = {r["name"]: r for r in rows}
    merged = {r["name"]: r for r in kept if r.get("name") in NETS} | fresh
    rows = [merged[n] for n in NETS if n in merged]
    path.write_text(json.dumps(rows, indent=2) + "\n")
    heading = "## Scaling: `edgepack run` wall time per stage vs model size"
    section = heading + "\n\n" + note + "\n\n" + table(rows) + "\n"
    replace_section(ROOT / "bench" / "RESULTS.md", heading, section)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nets", nargs="*", default=list(NETS), choices=list(NETS))
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--weights", action="append", default=[], help="NET=PATH (trained weights)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model")
    p.add_argument("--data")
    p.add_argument("--out")
    p.add_argument("--set", action="append", default=[])
    p.add_argument(
        "--table-only", action="store_true", help="rewrite RESULTS.md from bench/scaling.json"
    )
    args = p.parse_args()
    if args.child:
        child(args)
        return
    if args.table_only:
        rows = json.loads((ROOT / "bench" / "scaling.json").read_text())
        write_results(rows, _note())
        return
    weights = dict(w.split("=", 1) for w in args.weights)
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgepack-scaling-") as tmp:
        for name in args.nets:
            rows.append(measure(name, Path(tmp), args.repeat, weights))
            print(json.dumps(rows[-1]), flush=True)
            # Written after every net: a long run interrupted keeps what it measured.
            write_results(rows, _note())


def _note() -> str:
    return (
        f"`.venv/bin/python bench/scaling.py [--nets ...] [--repeat N]` on {os.cpu_count()} "
        "cores: every run's wall time in the 'wall s' column, the median first, * on a run "
        "that found its ONNX export in the cache (the 1-minute "
        "load average at the start of each run in the 'load' column). Built-in nets without "
        "weights start from seeded weights, so the first run of a net exports to ONNX and the "
        "others find the export in edgepack's cache (~/.cache/edgepack/onnx), as a user's "
        "repeated runs do. Dense one-shot, fp32 + int8 in ONNX and TFLite, x86_64 recipe; seconds "
        "per stage are those of the median run; 'ONNX export (of it)' is the export's own share "
        "of 'compress + ONNX export'. Peak RSS: the run with its validator children."
    )


if __name__ == "__main__":
    main()
