"""Random small CNNs: torch -> export_onnx -> convert_model -> LiteRT, against onnxruntime.

Hypothesis draws a network: input channels and size, then a sequence of blocks among conv
(1x1 / 3x3, stride 1 / 2), depthwise conv, relu, relu6, residual add, max / average pool,
channel concat, and a head (global average pool or flatten, then a fully-connected layer).
Each is exported to ONNX with edgepack's exporter, converted with edgepack's TFLite writer, and
the TFLite output must match onnxruntime's to 1e-4 of the output's range on random inputs.

Derandomized (fixed seed), no deadline, no example database. Each example costs ~1-2 s (the
dynamo ONNX export dominates), so the fast run draws 10 networks and the slow one 30.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from torch import nn

from exporter.onnx.export import export_onnx, load_onnx, onnx_logits
from exporter.tflite import convert_model

BLOCKS = ["conv", "depthwise", "relu", "relu6", "add", "maxpool", "avgpool", "concat"]
REL_TOL = 1e-4


@st.composite
def networks(draw) -> dict:
    blocks = []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(BLOCKS))
        arg = {
            "conv": st.tuples(st.sampled_from([1, 3]), st.sampled_from([1, 2]), st.integers(2, 12)),
            "depthwise": st.sampled_from([1, 2]),
            "concat": st.integers(1, 6),
        }.get(kind, st.just(None))
        blocks.append((kind, draw(arg)))
    return {
        "channels": draw(st.sampled_from([1, 3])),
        "size": draw(st.integers(5, 14)),
        "blocks": tuple(blocks),
        "head": draw(st.sampled_from(["gap", "flatten"])),
        "classes": draw(st.integers(2, 10)),
        "seed": draw(st.integers(0, 2**16)),
    }


class RandomNet(nn.Module):
    """The network a drawn spec describes; blocks that would shrink below 2x2 are skipped."""

    def __init__(self, spec: dict):
        super().__init__()
        torch.manual_seed(spec["seed"])
        c, s = spec["channels"], spec["size"]
        self.layers = nn.ModuleList()
        self.kinds: list[str] = []
        for kind, arg in spec["blocks"]:
            if kind == "conv":
                k, stride, out = arg
                if stride == 2 and s < 4:
                    stride = 1
                layer = nn.Conv2d(c, out, k, stride=stride, padding=k // 2)
                c, s = out, (s + 2 * (k // 2) - k) // stride + 1
            elif kind == "depthwise":
                stride = arg if s >= 4 else 1
                layer = nn.Conv2d(c, c, 3, stride=stride, padding=1, groups=c)
                s = (s - 1) // stride + 1
            elif kind == "relu":
                layer = nn.ReLU()
            elif kind == "relu6":
                layer = nn.ReLU6()
            elif kind == "add":  # residual: x + conv1x1(x)
                layer = nn.Conv2d(c, c, 1)
            elif kind in ("maxpool", "avgpool"):
                if s < 4:
                    continue
                layer = (nn.MaxPool2d if kind == "maxpool" else nn.AvgPool2d)(2, 2)
                s //= 2
            else:  # concat: [x, relu(conv3x3(x))] along channels
                layer = nn.Conv2d(c, arg, 3, padding=1)
                c += arg
            self.layers.append(layer)
            self.kinds.append(kind)
        self.head = spec["head"]
        self.fc = nn.Linear(c if self.head == "gap" else c * s * s, spec["classes"])

    def forward(self, x):
        for kind, layer in zip(self.kinds, self.layers, strict=True):
            if kind == "add":
                x = x + layer(x)
            elif kind == "concat":
                x = torch.cat([x, torch.relu(layer(x))], dim=1)
            else:
                x = layer(x)
        x = x.mean((2, 3)) if self.head == "gap" else torch.flatten(x, 1)
        return self.fc(x)


def _litert(data: bytes, x_nhwc: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=data)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    rows = []
    for img in x_nhwc:
        it.set_tensor(inp["index"], img[None])
        it.invoke()
        rows.append(it.get_tensor(out["index"])[0].copy())
    return np.stack(rows)


def _check_network(spec: dict, tmp, stats: Counter) -> None:
    stats["networks"] += 1
    net = RandomNet(spec).eval()
    shape = (spec["channels"], spec["size"], spec["size"])
    path = tmp / "net.onnx"
    export_onnx(net, shape, path)
    data, info = convert_model(load_onnx(path), input_layout="nhwc")
    stats["tflite ops"] += sum(info["op_counts"].values())
    x = np.random.default_rng(spec["seed"]).standard_normal((4, *shape)).astype(np.float32)
    ref = onnx_logits(path, x)
    got = _litert(data, np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
    scale = max(float(ref.max() - ref.min()), 1e-6)
    err = float(np.abs(got - ref).max()) / scale
    stats["max relative error x1e9"] = max(stats["max relative error x1e9"], round(err * 1e9))
    assert got.shape == ref.shape and err <= REL_TOL, (spec, err)
    with torch.no_grad():  # and the export itself matches torch
        assert np.abs(net(torch.from_numpy(x)).numpy() - ref).max() <= 1e-4 * scale + 1e-5


def _fuzz(n: int, tmp_path) -> Counter:
    stats: Counter = Counter()

    @settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.generate],
    )
    @given(networks())
    def check(spec):
        _check_network(spec, tmp_path, stats)

    check()
    print(f"\nrandom CNNs: {dict(stats)}")
    return stats


def test_random_cnns_convert_and_match(tmp_path):
    assert _fuzz(10, tmp_path)["networks"] == 10


@pytest.mark.slow
def test_random_cnns_convert_and_match_more(tmp_path):
    # A different stream of networks from the fast test: hypothesis derandomizes per test.
    assert _fuzz(30, tmp_path)["networks"] == 30
