"""Catalogue cases of issue #15's model entries: `--output`, `--layout` and ONNX files whose
input edgepack cannot feed, refused in one line before anything is written; an export that no
torch.onnx path can do, in one line naming each path's first cause."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.robustness.harness import Call, Ctx, check_case
from tests.robustness.options import FP32_ONLY

NETS = textwrap.dedent("""
    import torch
    from torch import nn

    class Pair(nn.Module):  # returns a tuple
        def __init__(self, in_channels=1):
            super().__init__()
            self.conv = nn.Conv2d(in_channels, 10, 3, padding=1)
        def forward(self, x):
            y = self.conv(x).mean((2, 3))
            return y, y

    class NeverExports(Pair):  # runs eagerly, refuses under torch.export and jit tracing
        def forward(self, x):
            if torch.compiler.is_compiling() or torch.jit.is_tracing():
                raise RuntimeError("this model cannot be traced")
            return self.conv(x).mean((2, 3))
""")


def _onnx(
    ctx: Ctx,
    name: str,
    input_shape: list,
    *,
    outputs: tuple[str, ...] = ("logits",),
    extra_input: bool = False,
    dtype: int = TensorProto.FLOAT,
) -> Path:
    """input -> GlobalAveragePool -> Flatten -> Gemm(-> 10) = logits [-> Softmax = probs]."""
    w = numpy_helper.from_array(np.ones((1, 10), np.float32), "w")
    b = numpy_helper.from_array(np.zeros(10, np.float32), "b")
    src = "input"
    nodes = []
    if dtype != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", ["input"], ["x"], to=TensorProto.FLOAT))
        src = "x"
    nodes += [
        helper.make_node("GlobalAveragePool", [src], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w", "b"], ["logits"]),
    ]
    inputs = [helper.make_tensor_value_info("input", dtype, input_shape)]
    if extra_input:
        inputs.append(helper.make_tensor_value_info("scale", TensorProto.FLOAT, [1]))
        nodes.append(helper.make_node("Mul", ["logits", "scale"], ["scaled"]))
    if "probs" in outputs:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=1))
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["N", 10]) for o in outputs]
    if extra_input:
        outs = [helper.make_tensor_value_info("scaled", TensorProto.FLOAT, ["N", 10])]
    graph = helper.make_graph(nodes, "g", inputs, outs, [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    path = ctx.tmp / name
    onnx.save_model(model, str(path))
    return path


def _onnx_run(name: str, shape: list, args: tuple, fragments: tuple, **kw) -> Callable[[Ctx], Call]:
    def build(ctx: Ctx) -> Call:
        path = _onnx(ctx, name, shape, **kw)
        return Call(ctx.run("--model", path, *args, *FP32_ONLY), fragments)

    return build


def _nets(ctx: Ctx, name: str) -> str:
    return f"{ctx.write('nets.py', NETS)}:{name}"


CASES: list[tuple[str, Callable[[Ctx], Call]]] = [
    (
        "model/onnx-output-not-among-outputs",
        _onnx_run(
            "two.onnx",
            ["N", 1, 8, 8],
            ("--output", "scores"),
            ("--output scores", "two.onnx has no output 'scores'", "logits, probs"),
            outputs=("logits", "probs"),
        ),
    ),
    (
        "model/onnx-layout-ambiguous",
        _onnx_run(
            "anydims.onnx",
            ["N", "C", "H", "W"],
            (),
            ("anydims.onnx", "could be NCHW or NHWC", "--layout nchw or --layout nhwc"),
        ),
    ),
    (
        "model/onnx-layout-does-not-fit",
        _onnx_run(
            "nchw.onnx",
            ["N", 1, 8, 8],
            ("--layout", "nhwc"),
            ("nchw.onnx takes input 'input'", "not NHWC", "1x8x8 images"),
        ),
    ),
    (
        "model/onnx-neither-layout-fits",
        _onnx_run("rgb.onnx", ["N", 3, 8, 8], (), ("rgb.onnx takes input 'input'", "[N,1,8,8]")),
    ),
    (
        "model/onnx-fixed-batch-8",
        _onnx_run("b8.onnx", [8, 1, 8, 8], (), ("b8.onnx", "fixed batch of 8", "dynamic batch")),
    ),
    (
        "model/onnx-two-inputs",
        _onnx_run(
            "two_in.onnx",
            ["N", 1, 8, 8],
            (),
            ("two_in.onnx has 2 inputs", "'input', 'scale'", "one image"),
            extra_input=True,
        ),
    ),
    (
        "model/onnx-integer-input",
        _onnx_run(
            "int.onnx",
            ["N", 1, 8, 8],
            (),
            ("int.onnx: input 'input' is int64", "float32 images"),
            dtype=TensorProto.INT64,
        ),
    ),
    (
        "model/torch-output-not-among-outputs",
        lambda c: Call(
            c.run("--model", _nets(c, "Pair"), "--output", "2"),
            ("--output 2", "outputs are 0, 1"),
        ),
    ),
    (
        "model/output-of-a-single-tensor-model",
        lambda c: Call(c.seeded("--output", "logits"), ("--output logits", "a single tensor")),
    ),
    (
        "model/layout-of-a-torch-model",
        lambda c: Call(c.seeded("--layout", "nhwc"), ("--layout nhwc", "only for an .onnx model")),
    ),
    (
        "model/export-fails-on-every-path",
        lambda c: Call(
            c.run(
                "--model",
                _nets(c, "NeverExports"),
                "--set",
                "compress.prune.sparsity=0",
                *FP32_ONLY,
            ),  # fmt: skip
            (
                "torch.onnx.export failed",
                "dynamo, dynamic batch: this model cannot be traced",
                "dynamo, batch 1: this model cannot be traced",
                "torchscript, dynamic batch: this model cannot be traced",
            ),
            process=True,  # torch's loggers write to the real stderr
        ),
    ),
]


@pytest.mark.parametrize("builder", [b for _, b in CASES], ids=[i for i, _ in CASES])
def test_bad_input(builder, tmp_path, request, monkeypatch):
    check_case(builder, tmp_path, request, monkeypatch)
