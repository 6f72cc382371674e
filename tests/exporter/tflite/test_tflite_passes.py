"""One unit test (or a few) per graph pass, on hand-built IR graphs."""

from __future__ import annotations

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from exporter.errors import ConversionError
from exporter.tflite import passes
from exporter.tflite.ir import Graph
from exporter.tflite.writer import serialize

RNG = np.random.default_rng(4)


def _run(graph: Graph, x: np.ndarray) -> np.ndarray:
    it = Interpreter(model_content=serialize(graph))
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


def _conv_graph(follow: list[tuple[str, np.ndarray | None]]) -> Graph:
    """x -> CONV_2D -> (op, const) ... -> y, NHWC [1, 5, 4, 3] -> [1, 5, 4, 2]."""
    g = Graph()
    x = g.add_tensor("x", (1, 5, 4, 3))
    w = g.add_const("w", RNG.standard_normal((2, 3, 3, 3)))
    b = g.add_const("b", RNG.standard_normal(2))
    cur = g.add_tensor("conv", (1, 5, 4, 2))
    g.add_op(
        "CONV_2D",
        [x, w, b],
        [cur],
        padding="SAME",
        stride_w=1,
        stride_h=1,
        fused_activation_function="NONE",
    )
    for i, (op, const) in enumerate(follow):
        out = g.add_tensor(f"t{i}", (1, 5, 4, 2))
        ins = [cur] if const is None else [cur, g.add_const(f"c{i}", const)]
        opts = {"fused_activation_function": "NONE"} if op in ("MUL", "ADD", "SUB") else {}
        g.add_op(op, ins, [out], **opts)
        cur = out
    g.inputs, g.outputs = [x], [cur]
    return g


def test_remove_identity_keeps_output_name():
    g = Graph()
    x, a, y = g.add_tensor("x", (1, 4)), g.add_tensor("a", (1, 4)), g.add_tensor("y", (1, 4))
    g.add_op("RELU", [x], [a])
    g.add_op("IDENTITY", [a], [y])
    g.inputs, g.outputs = [x], [y]
    g = passes.remove_dead(passes.remove_identity(g))
    assert [(o.op, o.inputs, o.outputs) for o in g.operators] == [("RELU", ["x"], ["y"])]
    assert "a" not in g.tensors


def test_remove_identity_in_the_middle_and_of_a_graph_input():
    g = Graph()
    x, a, b = g.add_tensor("x", (1, 4)), g.add_tensor("a", (1, 4)), g.add_tensor("b", (1, 4))
    g.add_op("IDENTITY", [x], [a])
    g.add_op("RELU", [a], [b])
    g.inputs, g.outputs = [x], [b]
    g = passes.remove_identity(g)
    assert [(o.op, o.inputs) for o in g.operators] == [("RELU", ["x"])]
    passthrough = Graph()
    x, y = passthrough.add_tensor("x", (1, 4)), passthrough.add_tensor("y", (1, 4))
    passthrough.add_op("IDENTITY", [x], [y])
    passthrough.inputs, passthrough.outputs = [x], [y]
    passthrough = passes.remove_identity(passthrough)
    assert [o.op for o in passthrough.operators] == ["RESHAPE"]
    value = RNG.standard_normal((1, 4)).astype(np.float32)
    np.testing.assert_array_equal(_run(passthrough, value), value)


def test_fold_constants_evaluates_const_only_ops():
    g = Graph()
    x = g.add_tensor("x", (2, 3))
    w = g.add_const("w", np.arange(6, dtype=np.float32).reshape(3, 2))
    perm = g.add_const("perm", [1, 0], "int32")
    wt = g.add_tensor("wt", (2, 3))
    g.add_op("TRANSPOSE", [w, perm], [wt])
    y = g.add_tensor("y", (2, 3))
    g.add_op("ADD", [x, wt], [y], fused_activation_function="NONE")
    g.inputs, g.outputs = [x], [y]
    g = passes.fold_constants(g)
    assert [o.op for o in g.operators] == ["ADD"]
    np.testing.assert_array_equal(
        g.tensors["wt"].data, np.arange(6, dtype=np.float32).reshape(3, 2).T
    )


def test_fold_affine_merges_batchnorm_mul_add_into_conv():
    scale, shift = RNG.uniform(0.5, 2, 2), RNG.standard_normal((1, 1, 1, 2))
    x = RNG.standard_normal((1, 5, 4, 3)).astype(np.float32)
    g = _conv_graph([("MUL", scale), ("ADD", shift), ("SUB", np.float32(0.25))])
    before = _run(g, x)
    g = passes.remove_dead(passes.fold_affine(g))
    assert [o.op for o in g.operators] == ["CONV_2D"]
    np.testing.assert_allclose(_run(g, x), before, rtol=1e-5, atol=1e-5)


def test_fold_affine_skips_non_per_channel_constants():
    g = _conv_graph([("MUL", RNG.standard_normal((1, 5, 1, 1)))])
    g = passes.fold_affine(g)
    assert [o.op for o in g.operators] == ["CONV_2D", "MUL"]


def test_fuse_activations():
    x = RNG.standard_normal((1, 5, 4, 3)).astype(np.float32)
    g = _conv_graph([("RELU6", None)])
    before = _run(g, x)
    g = passes.remove_dead(passes.fuse_activations(g))
    assert [o.op for o in g.operators] == ["CONV_2D"]
    assert g.operators[0].options["fused_activation_function"] == "RELU6"
    np.testing.assert_allclose(_run(g, x), before, rtol=1e-6)


@pytest.mark.parametrize("act", ["TANH", "LOGISTIC"])
def test_fuse_activations_leaves_unclamped_activations(act):
    # Builtin kernels ignore a fused TANH (they only clamp), so it must stay a separate op.
    g = passes.fuse_activations(_conv_graph([(act, None)]))
    assert [o.op for o in g.operators] == ["CONV_2D", act]


def test_litert_ignores_a_fused_tanh():
    # Why fuse_activations never fuses TANH: LiteRT accepts the flag and silently skips it.
    x = RNG.standard_normal((1, 5, 4, 3)).astype(np.float32)
    g = _conv_graph([])
    plain = _run(g, x)
    g.operators[0].options["fused_activation_function"] = "TANH"
    fused = _run(g, x)
    np.testing.assert_allclose(fused, plain, rtol=1e-5, atol=1e-5)
    assert np.abs(plain).max() > 1.5  # so tanh would have visibly changed the values


def test_fuse_activations_needs_single_consumer():
    g = _conv_graph([("RELU", None)])
    extra = g.add_tensor("extra", (1, 5, 4, 2))
    g.add_op("LOGISTIC", ["conv"], [extra])
    g.outputs.append(extra)
    g = passes.fuse_activations(g)
    assert [o.op for o in g.operators] == ["CONV_2D", "RELU", "LOGISTIC"]


def _transposes(perms: list[list[int]]) -> Graph:
    g = Graph()
    cur = g.add_tensor("x", (1, 2, 3, 4))
    g.inputs = [cur]
    for i, perm in enumerate(perms):
        shape = tuple(g.tensors[cur].shape[p] for p in perm)
        out = g.add_tensor(f"t{i}", shape)
        g.add_op("TRANSPOSE", [cur, g.add_const(f"p{i}", perm, "int32")], [out])
        cur = out
    relu = g.add_tensor("y", g.tensors[cur].shape)
    g.add_op("RELU", [cur], [relu])
    g.outputs = [relu]
    return g


def test_cancel_transposes_pair_vanishes():
    g = passes.remove_dead(passes.cancel_transposes(_transposes([[0, 2, 3, 1], [0, 3, 1, 2]])))
    assert [(o.op, o.inputs) for o in g.operators] == [("RELU", ["x"])]


def test_cancel_transposes_composes_chain():
    x = RNG.standard_normal((1, 2, 3, 4)).astype(np.float32)
    g = _transposes([[0, 2, 3, 1], [0, 2, 1, 3]])
    before = _run(g, x)
    g = passes.remove_dead(passes.cancel_transposes(g))
    assert [o.op for o in g.operators] == ["TRANSPOSE", "RELU"]
    np.testing.assert_array_equal(_run(g, x), before)


def test_remove_dead_drops_unused_ops_tensors_and_buffers():
    g = _conv_graph([])
    unused = g.add_tensor("unused", (1, 5, 4, 2))
    g.add_op(
        "MUL",
        ["conv", g.add_const("dead_const", np.ones(2))],
        [unused],
        fused_activation_function="NONE",
    )
    g.add_const("orphan", np.ones(7))
    g = passes.remove_dead(g)
    assert [o.op for o in g.operators] == ["CONV_2D"]
    assert {"unused", "dead_const", "orphan"}.isdisjoint(g.tensors)


def test_pass_order_and_failures_are_errors():
    assert [name for name, _ in passes.PASSES] == [
        "remove_identity",
        "fold_constants",
        "fold_affine",
        "affine_to_depthwise",
        "fuse_activations",
        "cancel_transposes",
        "split_wide_concats",
        "remove_dead",
    ]

    def broken(graph: Graph) -> Graph:
        raise RuntimeError("boom")

    with pytest.raises(ConversionError, match="pass 'broken' failed.*boom"):
        passes.run_passes(Graph(), [("broken", broken)])
