"""Helpers for the TFLite exporter tests: tiny ONNX graphs, ORT / LiteRT runners, parity checks."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
from ai_edge_litert.interpreter import Interpreter, OpResolverType
from onnx import TensorProto, helper, numpy_helper

from exporter.tflite import convert_model

RESOLVERS = {
    "xnnpack": OpResolverType.AUTO,  # default: XNNPACK delegate applied
    "builtin": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
}


def make_model(
    nodes: list[onnx.NodeProto],
    inputs: dict[str, tuple[int, ...]],
    outputs: list[str],
    initializers: dict[str, np.ndarray] | None = None,
    opset: int = 18,
) -> onnx.ModelProto:
    """A float32 model whose graph outputs get their types from shape inference."""
    graph = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in inputs.items()],
        [],
        initializer=[
            numpy_helper.from_array(np.asarray(v), k) for k, v in (initializers or {}).items()
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    inferred = {vi.name: vi for vi in onnx.shape_inference.infer_shapes(model).graph.value_info}
    model.graph.output.extend(inferred[n] for n in outputs)
    onnx.checker.check_model(model)
    return model


def run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds), strict=True))


def run_tflite(
    data: bytes, feeds: dict[str, np.ndarray], resolver: str = "xnnpack", nhwc: bool = True
) -> dict[str, np.ndarray]:
    """Feed NCHW arrays (transposed to NHWC when ``nhwc``); rank-4 outputs come back NCHW."""
    it = Interpreter(model_content=data, experimental_op_resolver_type=RESOLVERS[resolver])
    it.allocate_tensors()
    for d in it.get_input_details():
        x = feeds[d["name"]]
        it.set_tensor(
            d["index"], np.ascontiguousarray(x.transpose(0, 2, 3, 1) if nhwc and x.ndim == 4 else x)
        )
    it.invoke()  # some kernel errors only surface here
    out = {}
    for d in it.get_output_details():
        y = it.get_tensor(d["index"])
        out[d["name"]] = y.transpose(0, 3, 1, 2) if nhwc and y.ndim == 4 else y
    return out


def interpreter_op_counts(data: bytes) -> dict[str, int]:
    """Op counts as LiteRT itself reads them (independent of our describe code)."""
    it = Interpreter(model_content=data, experimental_op_resolver_type=RESOLVERS["builtin"])
    return dict(Counter(op["op_name"] for op in it._get_ops_details()))


def random_feeds(inputs: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal(s).astype(np.float32) for n, s in inputs.items()}


def assert_close(got: np.ndarray, ref: np.ndarray, rel: float = 1e-5) -> None:
    assert got.shape == ref.shape, f"shape {got.shape} != {ref.shape}"
    tol = rel * max(1.0, float(np.abs(ref).max()))
    err = float(np.abs(got - ref).max())
    assert err <= tol, f"max |delta| {err:.3g} > {tol:.3g}"


def check_parity(
    model: onnx.ModelProto,
    inputs: dict[str, tuple[int, ...]],
    ops: dict[str, int] | None = None,
    resolvers: tuple[str, ...] = ("xnnpack",),
    rel: float = 1e-5,
    feeds: dict[str, np.ndarray] | None = None,
) -> dict[str, int]:
    """Convert, compare every output against ORT, and check exact op counts if given."""
    feeds = feeds or random_feeds(inputs)
    data, stats = convert_model(model)
    ref = run_ort(model, feeds)
    for resolver in resolvers:
        got = run_tflite(data, feeds, resolver)
        for name, value in ref.items():
            assert_close(got[name], value, rel)
    counts = interpreter_op_counts(data)
    assert counts == stats["op_counts"]
    if ops is not None:
        assert counts == ops, f"ops {counts} != expected {ops}"
    return counts
