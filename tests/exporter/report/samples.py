"""Hand-made report.json dicts (exporter/report/schema.py) for the HTML and compare tests.

Built in code rather than by a run so each test states exactly which sections are present,
and so they cover what a run on this machine cannot produce (QEMU instruction counts,
emulated latency, errored artifacts).
"""

from __future__ import annotations

import copy
from html.parser import HTMLParser


def _artifact(
    path: str,
    fmt: str,
    precision: str,
    storage: str,
    *,
    nbytes: int,
    acc: float,
    p90: float,
    ref: float = 90.0,
    budgets: dict | None = None,
) -> dict:
    budgets = budgets or {
        "max_accuracy_drop": 1.5,
        "max_latency_p90_ms": 50.0,
        "max_bytes": 1_000_000,
    }
    drop = ref - acc
    values = {"max_accuracy_drop": drop, "max_latency_p90_ms": p90, "max_bytes": nbytes}
    return {
        "path": path,
        "format": fmt,
        "precision": precision,
        "storage": storage,
        "bytes": nbytes,
        "gzip_bytes": nbytes // 3,
        "accuracy": acc,
        "accuracy_drop": drop,
        "agreement": 0.98,
        "max_abs_diff": 0.01,
        "latency_ms": {"p50": p90 * 0.8, "p90": p90, "mean": p90 * 0.85, "runs": 10},
        "threads": 1,
        "runtime": "onnxruntime" if fmt == "onnx" else "ai-edge-litert",
        "runtime_version": "1.0",
        "delegate": "cpu",
        "peak_rss_mb": 55.0,
        "samples": 100,
        "status": "ok",
        "budgets": {
            n: {"limit": lim, "value": values[n], "ok": values[n] <= lim}
            for n, lim in budgets.items()
        },
    }


def full_report() -> dict:
    """A passing run with every section: compression, quantization with a divergence."""
    return {
        "schema_version": 3,
        "passed": True,
        "verdict": "passed",
        "reasons": [],
        "target": {
            "name": "x86_64",
            "source": "targets/x86_64.toml",
            "device": "local",
            "description": "this machine",
        },
        "model": {
            "spec": "seed-cnn",
            "weights": "seed.pt",
            "input_shape": [1, 8, 8],
            "classes": [str(i) for i in range(10)],
        },
        "data": {
            "train": "digits",
            "train_images": 400,
            "eval": "digits hold-out",
            "eval_images": 100,
            "eval_note": "hold-out of 20% <seed 0>",
            "normalization": {"mean": [0.3], "std": [0.4], "source": "data"},
        },
        "recipe": {
            "name": "x86_64",
            "export": {"formats": ["onnx", "tflite"], "precisions": ["fp32", "int8"]},
            "runtime": {"runs": 10, "threads": 1},
            "budgets": {
                "max_accuracy_drop": 1.5,
                "min_agreement": None,
                "max_latency_p90_ms": 50.0,
                "max_bytes": 1_000_000,
            },
        },
        "cpu": {
            "machine": "x86_64",
            "model": "Test CPU",
            "cpu_part": None,
            "cores": 2,
            "features": ["avx2", "avx512_vnni"],
        },
        "runtimes": {"onnxruntime": "1.0", "ai-edge-litert": "2.0"},
        "reference": {
            "accuracy": 90.0,
            "params": 1000,
            "macs": 5000,
            "samples": 100,
            "points_per_image": 1.0,
            "eval_classes": 10,
            "chance_accuracy": 10.0,
        },
        "compression": {
            "method": "gradual magnitude + fine-tune",
            "target_sparsity": 0.75,
            "finetune_loss": [0.5, 0.4],
            "pruned_fraction": 0.75,
            "layers": [
                {"name": "conv1", "kind": "Conv", "params": 144, "zeros": 0, "sparsity": 0.0},
                {"name": "fc<1>", "kind": "Linear", "params": 800, "zeros": 640, "sparsity": 0.8},
            ],
        },
        "export": {"onnx_vs_torch_max_abs_diff": 1e-6},
        "quantization": {
            "method": "percentile",
            "reduce_range": False,
            "per_channel": True,
            "reduce_range_reason": "x86 with avx512_vnni: full 8-bit weights",
            "float_layers": ["node_fc"],
            "fp32_tuning_accuracy": 91.0,
            "attempts": [
                {
                    "method": "minmax",
                    "float_layers": [],
                    "tuning_accuracy": 88.0,
                    "drop": 3.0,
                    "chosen": False,
                },
                {
                    "method": "percentile",
                    "float_layers": ["node_fc"],
                    "tuning_accuracy": 90.8,
                    "drop": 0.2,
                    "chosen": True,
                },
            ],
            "sensitivity": [
                {
                    "node": "node_conv",
                    "op": "Conv+Relu",
                    "tensor": "relu",
                    "cosine": 0.9999,
                    "snr_db": 40.0,
                },
                {
                    "node": "node_fc",
                    "op": "Gemm",
                    "tensor": "logits",
                    "cosine": 0.97,
                    "snr_db": 12.5,
                },
            ],
            "first_divergence": "node_fc",
            "within_budget": True,
            "calibration": "256 training images",
            "seconds": 1.25,
        },
        "edgepack_version": "0.1.0",
        "artifacts": [
            _artifact(
                "model.fp32.onnx", "onnx", "fp32", "dense", nbytes=100_000, acc=90.5, p90=0.02
            ),
            _artifact(
                "model.fp32.tflite", "tflite", "fp32", "dense", nbytes=90_000, acc=90.5, p90=0.01
            ),
            _artifact(
                "model.int8.onnx", "onnx", "int8", "dense", nbytes=40_000, acc=89.8, p90=0.03
            ),
        ],
    }


def failing_report() -> dict:
    """A failed run: one artifact over two budgets, one skipped, one errored; model as ONNX
    (no compression layers), no int8, emulated latency with instruction counts."""
    rep = full_report()
    rep["passed"] = False
    rep["verdict"] = "failed"
    rep["model"]["spec"] = "/models/<evil>&co.onnx"
    rep["compression"] = {"method": "skipped: the model entered as ONNX"}
    rep.pop("quantization")
    rep.pop("export")
    rep["recipe"]["export"]["precisions"] = ["fp32"]
    rep["recipe"]["budgets"]["max_latency_p90_ms"] = None
    rep["cpu"]["emulated"] = "qemu-aarch64 8.2 -cpu cortex-a53"
    bad = _artifact(
        "model.fp32.onnx",
        "onnx",
        "fp32",
        "dense",
        nbytes=2_000_000,
        acc=80.0,
        p90=3.0,
        budgets={"max_accuracy_drop": 1.5, "max_bytes": 1_000_000},
    )
    bad["latency_ms"]["emulated"] = True
    bad["emulated"] = True
    bad["instructions_per_inference"] = 1_234_567.0
    rep["artifacts"] = [
        bad,
        {
            "path": "model.fp32.tflite",
            "format": "tflite",
            "precision": "fp32",
            "storage": "dense",
            "bytes": 90_000,
            "status": "skipped",
            "reason": "ai-edge-litert is not installed",
            "budgets": {},
        },
        {
            "path": "model.fp32.sparse.onnx",
            "format": "onnx",
            "precision": "fp32",
            "storage": "sparse",
            "bytes": 80_000,
            "status": "error",
            "reason": "runner crashed: <segfault> [exit 139]",
            "budgets": {},
        },
    ]
    rep["reasons"] = [
        "model.fp32.onnx: max_accuracy_drop 10 vs limit 1.5",
        "model.fp32.onnx: max_bytes 2e+06 vs limit 1e+06",
        "model.fp32.tflite: not validated (ai-edge-litert is not installed)",
        "model.fp32.sparse.onnx: not validated (runner crashed: <segfault> [exit 139])",
    ]
    return rep


def check_report(base: dict, target: str = "rpi4-qemu") -> dict:
    """What `edgepack check` writes for ``base``: no compression/quantization sections."""
    rep = copy.deepcopy(base)
    for key in ("compression", "quantization", "export"):
        rep.pop(key, None)
    rep["target"] = {**rep["target"], "name": target, "device": "qemu", "host": None}
    rep["recipe"] = {**rep["recipe"], "name": target}
    rep["checked_dir"] = "/somewhere/out"
    for art in rep["artifacts"]:
        art["instructions_per_inference"] = 2_000_000.0
        art["latency_ms"] = {**art["latency_ms"], "emulated": True}
        art["emulated"] = True
    return rep


# --- checks on a rendered page, shared by the HTML, compare and browser tests ---------------

_URL_ATTRS = {
    "src",
    "href",
    "xlink:href",
    "srcset",
    "action",
    "poster",
    "data",
    "background",
    "formaction",
    "ping",
}
_VOID = {
    "area",
    "base",
    "br",
    "col",
    "embed",
    "hr",
    "img",
    "input",
    "link",
    "meta",
    "source",
    "track",
    "wbr",
}


class PageParser(HTMLParser):
    """Collects every URL-valued attribute, the tags in order, and tag-balance errors."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.urls: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.tags: list[str] = []
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.text: list[str] = []

    def _attrs(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name in _URL_ATTRS:
                self.urls.append((tag, name, value or ""))
            elif value and "url(" in value:  # style="...", clip-path="url(#p1)"
                self.urls.append((tag, "url()", value))

    def handle_starttag(self, tag, attrs):
        self._attrs(tag, attrs)
        if tag not in _VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):  # <path ... /> in inline SVG
        self._attrs(tag, attrs)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse_page(page: str) -> PageParser:
    parser = PageParser()
    parser.feed(page)
    parser.close()
    return parser


def assert_self_contained(page: str) -> PageParser:
    """No resource outside the file: every URL is data: or a #fragment, no script or link."""
    parsed = parse_page(page)
    for tag, attr, value in parsed.urls:
        if attr == "url()":
            assert all(part.startswith("#") for part in value.split("url(")[1:]), (tag, value)
            continue
        assert value.startswith(("data:", "#")), (tag, attr, value)
    assert "script" not in parsed.tags and "link" not in parsed.tags and "iframe" not in parsed.tags
    assert "@import" not in page and "url(http" not in page and "url(//" not in page
    assert parsed.errors == [] and parsed.stack == [], (parsed.errors, parsed.stack)
    return parsed
