"""`make bench`: edgepack against the tools users would pick instead, measured side by side.

On CIFAR-10 (``../shared/data/cifar10/train.npz`` or ``--data``), for the seed CNN and the
MobileNetV2-style net: torch eager fp32; ONNX Runtime fp32; ORT ``quantize_static`` with its
defaults and with ``reduce_range``; ``torch.nn.utils.prune`` global L1 + fine-tune exported as
dense ONNX; and every artifact of ``edgepack run`` on the x86_64 recipe. Latency is batch 1,
measured interleaved (one run of each candidate in turn) so machine noise hits all alike, at 1
and 2 threads. Writes bench/RESULTS.md and bench/results.json.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.utils.prune as torch_prune
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import exporter  # noqa: E402
from exporter.errors import EdgepackError  # noqa: E402
from exporter.inputs.data import channel_stats, load_data, stratified_split  # noqa: E402
from exporter.models.zoo import BUILTIN  # noqa: E402
from exporter.onnx.export import export_onnx  # noqa: E402
from exporter.training.loop import TrainConfig, accuracy, predict, train  # noqa: E402
from runtime_check.runtimes import open_session  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10" / "train.npz"
# Training epochs when bench/.work has no weights yet; MobileNetV2 is trained briefly so that
# `make bench` stays within 30 minutes on 2 cores (its accuracy is below what longer training gives).
EPOCHS = {"seed-cnn": 15, "mobilenetv2-cifar": 3}
# Fine-tune epochs after pruning, the same for torch.nn.utils.prune and edgepack; MobileNetV2's
# one epoch (~3 min here) keeps `make bench` within 30 minutes.
FINETUNE = {"seed-cnn": 2, "mobilenetv2-cifar": 1}
# Further edgepack runs per model: (label, recipe overrides, artifacts kept as rows).
VARIANTS = {
    "seed-cnn": [
        # TFLite's sparse float FC kernel reads 1x4 blocks directly: a speed win at ~90 %.
        (
            "FC 1x4 blocks 90 %",
            (
                "compress.prune.sparsity=0.9",
                "compress.prune.scope=layer",
                'compress.prune.exclude=["first_conv","last_fc","features.3"]',
                "compress.prune.block=[1,4]",
                "compress.finetune.epochs=3",
                "compress.finetune.augment=true",
                'export.formats=["tflite"]',
                'export.precisions=["fp32"]',
                'export.storage=["dense","sparse"]',
            ),
            ("model.fp32.tflite", "model.fp32.sparse.tflite"),
        ),
    ],
    "mobilenetv2-cifar": [
        # Structured pruning: half the channels physically removed, a smaller dense network.
        (
            "channels 50 %",
            (
                "compress.channels.ratio=0.5",
                "compress.prune.sparsity=0.0",
                "compress.finetune.epochs=1",
                'export.formats=["tflite"]',
                'export.storage=["dense"]',
            ),
            ("model.fp32.tflite", "model.int8.tflite"),
        ),
    ],
}


class _Reader(CalibrationDataReader):
    def __init__(self, x: np.ndarray):
        self._it = iter({"input": x[i : i + 1]} for i in range(len(x)))

    def get_next(self):
        return next(self._it, None)


class _TorchSession:
    """torch eager with the same run(x) interface as runtime_check's sessions."""

    def __init__(self, model: torch.nn.Module, threads: int):
        self.model, self.threads = model.eval(), threads

    batchable = True

    def run(self, x: np.ndarray) -> np.ndarray:
        torch.set_num_threads(self.threads)
        with torch.no_grad():
            return self.model(torch.from_numpy(x)).numpy()


def _gzip(path: Path) -> int:
    return len(gzip.compress(path.read_bytes(), 9, mtime=0))


def _weights(name: str, cache: Path, data: str, holdout: float) -> Path:
    path = cache / f"{name}.pt"
    if not path.exists():
        try:
            exporter.train(
                name, path, data=data, epochs=EPOCHS[name], lr=0.05, augment=True, holdout=holdout
            )
        except EdgepackError as exc:
            raise SystemExit(f"bench: training {name} failed: {exc}") from None
    return path


def _latency(
    candidates: dict, x: np.ndarray, layouts: dict, runs: int, block: int = 1, warmup: int = 20
) -> dict:
    """Interleaved: each round runs every candidate ``block`` times, on the same images.

    With several threads, a runtime's idle workers spin for a while after each run and would
    steal the cores from the next candidate; rounds of ``block`` runs, of which the first
    ``block // 5`` are not timed, let each candidate start on quiet cores.
    """
    times = {k: [] for k in candidates}
    feed = {k: (x.transpose(0, 2, 3, 1).copy() if layouts[k] == "nhwc" else x) for k in candidates}
    skip = block // 5
    for r in range(-warmup // block - 1, (runs + block - skip - 1) // (block - skip)):
        for k, sess in candidates.items():
            for b in range(block):
                j = (r * block + b) % len(x)
                one = feed[k][j : j + 1]
                t0 = time.perf_counter_ns()
                sess.run(one)
                if r >= 0 and b >= skip:
                    times[k].append((time.perf_counter_ns() - t0) / 1e6)
    return {k: (float(np.percentile(v, 50)), float(np.percentile(v, 90))) for k, v in times.items()}


def _measure(rows, paths, sessions_src, x, y, ref_acc: float, runs: int) -> None:
    """Bytes, accuracy (1 thread) and latency at 1 and 2 threads of every candidate, in place."""
    c = x.shape[1]
    for label, path in paths.items():
        rows[label]["bytes"] = path.stat().st_size
        rows[label]["gzip_bytes"] = _gzip(path)
    for threads in (1, 2):
        sessions, layouts = {}, {}
        for label in rows:
            if label in sessions_src:
                sessions[label] = _TorchSession(sessions_src[label], threads)
                layouts[label] = "nchw"
            else:
                sess = open_session(paths[label], threads, "xnnpack")
                sessions[label] = sess
                shape = sess.input.shape
                layouts[label] = "nhwc" if shape[-1] == c and shape[1] != c else "nchw"
        if threads == 1:
            for label, sess in sessions.items():
                xx = x.transpose(0, 2, 3, 1).copy() if layouts[label] == "nhwc" else x
                # Accuracy does not depend on the batch size: batch where the model allows.
                step = 256 if getattr(sess, "batchable", False) else 1
                logits = np.concatenate(
                    [sess.run(xx[i : i + step]) for i in range(0, len(xx), step)]
                )
                rows[label]["accuracy"] = accuracy(logits.reshape(len(xx), -1), y)
                rows[label]["drop"] = ref_acc - rows[label]["accuracy"]
        block = 1 if threads == 1 else 25
        for label, (p50, p90) in _latency(sessions, x, layouts, runs, block).items():
            rows[label][f"p50_{threads}t"], rows[label][f"p90_{threads}t"] = p50, p90


def bench_model(name: str, data: str, work: Path, runs: int, eval_n: int) -> list[dict]:
    full = load_data(data)
    train_ds, hold = stratified_split(full, 0.2, 0)
    norm = channel_stats(full)
    weights = _weights(name, work, data, 0.2)
    c, h, w = full.image_shape
    model = BUILTIN[name](in_channels=c, image_size=(h, w), num_classes=len(full.classes))
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.eval()
    ev = hold.subset(np.arange(min(eval_n, len(hold))), hold.source)
    x, y = norm.apply(ev.images), ev.labels
    ref = predict(model, x)
    ref_acc = accuracy(ref, y)
    calib = norm.apply(train_ds.images[:256])
    rows: dict[str, dict] = {}
    paths: dict[str, Path] = {}
    sessions_src: dict[str, object] = {}

    rows["torch eager fp32"] = {"bytes": None, "convert_s": 0.0}
    sessions_src["torch eager fp32"] = model

    t = time.perf_counter()
    export_onnx(model, (c, h, w), work / f"{name}.fp32.onnx")
    paths["ORT fp32"] = work / f"{name}.fp32.onnx"
    rows["ORT fp32"] = {"convert_s": time.perf_counter() - t}

    for label, rr in (
        ("ORT quantize_static defaults", False),
        ("ORT quantize_static reduce_range", True),
    ):
        t = time.perf_counter()
        out = work / f"{name}.ort_q{int(rr)}.onnx"
        quantize_static(
            str(paths["ORT fp32"]),
            str(out),
            _Reader(calib),
            quant_format=QuantFormat.QDQ,
            reduce_range=rr,
        )
        paths[label] = out
        rows[label] = {"convert_s": time.perf_counter() - t}

    # torch's own pruning utilities: global L1 75 %, fine-tuned, exported dense.
    ft_epochs = FINETUNE.get(name, 2)
    t = time.perf_counter()
    pruned = copy.deepcopy(model)
    targets = [
        (m, "weight") for m in pruned.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    torch_prune.global_unstructured(targets, torch_prune.L1Unstructured, amount=0.75)
    train(
        pruned, norm.apply(train_ds.images), train_ds.labels, TrainConfig(epochs=ft_epochs, lr=0.01)
    )
    for m, n in targets:
        torch_prune.remove(m, n)
    export_onnx(pruned, (c, h, w), work / f"{name}.torchprune.onnx")
    paths["torch.nn.utils.prune L1 75% + FT (dense ONNX)"] = work / f"{name}.torchprune.onnx"
    rows["torch.nn.utils.prune L1 75% + FT (dense ONNX)"] = {"convert_s": time.perf_counter() - t}

    # Validation is the bench's own (below), so edgepack's is cut to one image.
    quick = ("eval.samples=1", "runtime.runs=1", "runtime.warmup=0")
    runs_ = [("", (f"compress.finetune.epochs={ft_epochs}",), None), *VARIANTS.get(name, [])]
    for idx, (variant, overrides, keep) in enumerate(runs_):
        t = time.perf_counter()
        out_dir = work / (f"{name}.edgepack" if idx == 0 else f"{name}.edgepack.v{idx}")
        result = exporter.run(
            name,
            out_dir,
            weights=str(weights),
            data=data,
            force=True,
            overrides=(*quick, *overrides),
        )
        wall = time.perf_counter() - t
        comp = result.report.get("compression") or {}
        ref = result.report.get("reference") or {}
        for art in result.artifacts:
            if keep and art.path not in keep:
                continue
            label = f"edgepack {variant + ': ' if variant else ''}{art.path}"
            paths[label] = out_dir / art.path
            rows[label] = {
                "convert_s": art.tflite.conversion_s if art.tflite else None,
                "edgepack_run_s": wall,
                "variant": variant,
                "overrides": list(overrides),
                "params": comp.get("params"),
                "macs": comp.get("macs"),
                "params_before": ref.get("params"),
                "macs_before": ref.get("macs"),
            }

    _measure(rows, paths, sessions_src, x, y, ref_acc, runs)
    return [{"model": name, "candidate": k, **v} for k, v in rows.items()]


def _fmt(v, spec):
    return "—" if v is None else format(v, spec)


def write_markdown(rows: list[dict], path: Path, command: str, meta: dict) -> None:
    lines = [
        "# Benchmarks",
        "",
        f"Measured with `{command}` on {meta['cpu']} "
        f"({meta['cores']} cores), {meta['date']}. CIFAR-10 hold-out of "
        f"{meta['eval']} images (seeded stratified 20 % split of the training file, never "
        "trained on). Latency: batch 1, median (p50) and p90 of "
        f"{meta['runs']} runs per candidate, interleaved in one loop so machine noise hits "
        "all alike (1 thread: one run of each in turn; 2 threads: rounds of 25 runs each, the first 5 "
        "untimed, so the spinning workers of the previous runtime have gone quiet). `convert s`: wall time of that candidate's conversion/quantization step "
        "(edgepack: the TFLite writer for .tflite rows; the whole `edgepack run` is given "
        "once per model below the table).",
        "",
    ]
    for model in sorted({r["model"] for r in rows}):
        sub = [r for r in rows if r["model"] == model]
        lines += [
            f"## {model}",
            "",
            f"Trained {EPOCHS.get(model, '?')} epochs (`edgepack train "
            f"--augment`), hold-out accuracy of the dense model: "
            f"{sub[0]['accuracy']:.2f} %.",
            "",
            "| candidate | bytes | gzip bytes | top-1 % | drop | "
            "p50 1t ms | p90 1t ms | p50 2t ms | p90 2t ms | convert s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in sub:
            lines.append(
                f"| {r['candidate']} | {_fmt(r.get('bytes'), ',')} | {_fmt(r.get('gzip_bytes'), ',')} "
                f"| {r['accuracy']:.2f} | {r['drop']:+.2f} | {r['p50_1t']:.3f} | {r['p90_1t']:.3f} "
                f"| {r['p50_2t']:.3f} | {r['p90_2t']:.3f} | {_fmt(r.get('convert_s'), '.2f')} |"
            )
        lines.append("")
        ft = FINETUNE.get(model, 2)
        seen = set()
        for r in sub:
            if "edgepack_run_s" not in r or r["variant"] in seen:
                continue
            seen.add(r["variant"])
            what = (
                f"x86_64 recipe: prune 75 % with {ft} fine-tune epoch{'s' * (ft > 1)}, "
                "export, quantize, sparse copy"
                if not r["variant"]
                else "`--set " + " --set ".join(r["overrides"]) + "`"
            )
            size = (
                f"; parameters {r['params_before']:,} → {r['params']:,}, MACs "
                f"{r['macs_before'] / 1e6:.1f} M → {r['macs'] / 1e6:.1f} M"
                if r.get("params") and r.get("params_before") and r["params"] != r["params_before"]
                else ""
            )
            lines.append(
                f"- `edgepack run` {r['variant'] or 'default'} ({what}) took "
                f"{r['edgepack_run_s']:.0f} s{size}."
            )
        lines.append(
            f"- torch.nn.utils.prune and the default edgepack run fine-tune {ft} "
            f"epoch{'s' * (ft > 1)} after pruning."
        )
        lines.append("")
    path.write_text("\n".join(lines) + _kept_sections(path))


# Sections of RESULTS.md written by other benchmarks (bench/zoo.py, bench/scaling.py,
# bench/samplers.py): kept.
KEPT = ("## Zoo", "## Scaling", "## Samplers")


def _kept_sections(path: Path) -> str:
    """The other benchmarks' sections of ``path``, from the first of them to the end."""
    lines = path.read_text().splitlines(keepends=True) if path.is_file() else []
    start = next((i for i, ln in enumerate(lines) if ln.startswith(KEPT)), len(lines))
    kept = "".join(lines[start:])
    return "\n" + kept if kept else ""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--models", default="seed-cnn,mobilenetv2-cifar")
    p.add_argument("--runs", type=int, default=300)
    p.add_argument("--eval", type=int, default=10000)
    p.add_argument("--work", default=str(ROOT / "bench" / ".work"))
    args = p.parse_args()
    if not Path(args.data).is_file():
        raise SystemExit(f"bench: CIFAR-10 not found at {args.data} (pass --data PATH)")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = f"npz:{args.data}"
    rows = []
    for name in args.models.split(","):
        rows += bench_model(name, data, work, args.runs, args.eval)
    from runtime_check.cpu import describe_cpu

    cpu = describe_cpu()
    meta = {
        "cpu": cpu["model"],
        "cores": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
        "eval": args.eval,
        "runs": args.runs,
    }
    (ROOT / "bench" / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    write_markdown(rows, ROOT / "bench" / "RESULTS.md", "make bench", meta)
    print((ROOT / "bench" / "RESULTS.md").read_text())


if __name__ == "__main__":
    main()
