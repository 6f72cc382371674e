"""Split / Slice / Gather, channel shuffle and small-map adaptive pooling: fp32 parity with
onnxruntime, the TFLite ops chosen (no TRANSPOSE), XNNPACK coverage, and int8 vs ORT's QDQ."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from ai_edge_litert.interpreter import Interpreter
from int8_testutil import TfliteRunner, ort_probe, ort_probe_is_float, qdq_model
from onnx import helper
from tflite_testutil import RESOLVERS, check_parity, make_model, random_feeds, run_ort
from torch import nn

from exporter.errors import UnsupportedOpsError
from exporter.onnx.export import export_onnx
from exporter.tflite import convert_model, convert_onnx_file
from runtime_check.coverage import ops_outside_delegate

X = (1, 6, 7, 5)
BOTH = ("xnnpack", "builtin")
INT64_MAX = np.iinfo(np.int64).max


def _i64(*values: int) -> np.ndarray:
    return np.asarray(values, np.int64)


def _outside_xnnpack(data: bytes) -> list[str]:
    it = Interpreter(model_content=data, experimental_op_resolver_type=RESOLVERS["xnnpack"])
    it.allocate_tensors()
    outside = ops_outside_delegate(it)
    assert outside is not None
    return outside


# ----- Split ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "attrs", "opset", "tfl"),
    [
        ([], {"axis": 1, "num_outputs": 2}, 18, {"SPLIT": 1}),
        ([], {"axis": 1, "num_outputs": 3}, 18, {"SPLIT": 1}),
        # XNNPACK takes neither SPLIT_V nor a SPLIT into more than 4: one SLICE per part.
        (["sp"], {"axis": 1}, 13, {"SLICE": 2}),
        ([], {"axis": 2, "split": [3, 4]}, 11, {"SLICE": 2}),
        ([], {"axis": -1, "num_outputs": 5}, 18, {"SLICE": 5}),
    ],
    ids=["channels_half", "channels_thirds", "sizes_input", "rows_attr_opset11", "cols_five"],
)
def test_split(extra, attrs, opset, tfl):
    n_out = attrs.get("num_outputs", 2)
    outs = [f"y{i}" for i in range(n_out)]
    nodes = [helper.make_node("Split", ["x", *extra], outs, **attrs)]
    # A consumer per part keeps every output inside the graph, as in a real network.
    nodes += [helper.make_node("Relu", [o], [f"r{i}"]) for i, o in enumerate(outs)]
    model = make_model(
        nodes, {"x": X}, [f"r{i}" for i in range(n_out)], {"sp": _i64(1, 5)}, opset=opset
    )
    counts = check_parity(model, {"x": X}, resolvers=BOTH)
    assert counts == {**tfl, "RELU": n_out}
    assert _outside_xnnpack(convert_model(model)[0]) == []


def test_split_rank2():
    nodes = [helper.make_node("Split", ["x", "sp"], ["a", "b"], axis=-1)]
    model = make_model(nodes, {"x": (2, 7)}, ["a", "b"], {"sp": _i64(3, 4)})
    assert check_parity(model, {"x": (2, 7)}, resolvers=BOTH) == {"SLICE": 2}


def test_channel_split_runs_on_xnnpack():
    nodes = [
        helper.make_node("Split", ["x"], ["a", "b"], axis=1, num_outputs=2),
        helper.make_node("Add", ["a", "b"], ["y"]),
    ]
    model = make_model(nodes, {"x": X}, ["y"])
    check_parity(model, {"x": X}, {"SPLIT": 1, "ADD": 1})
    assert _outside_xnnpack(convert_model(model)[0]) == []


# ----- Slice ----------------------------------------------------------------------------------

SLICES = [
    # starts, ends, axes, steps, TFLite op
    ((1,), (4,), (1,), None, "SLICE"),  # channels
    ((1, 0), (INT64_MAX, -1), (2, 3), None, "SLICE"),  # INT64_MAX end, negative end
    ((-3,), (INT64_MAX,), (-1,), (1,), "SLICE"),  # negative start counted from the end
    ((0, 1), (7, 5), (2, 3), (2, 3), "STRIDED_SLICE"),
    ((5,), (-INT64_MAX,), (1,), (-2,), "STRIDED_SLICE"),  # reversed channels, past index 0
    ((4, 3), (0, 1), (2, 3), (-1, -1), "STRIDED_SLICE"),  # reversed, stopping before 0
    ((0, 0, 2), (1, 6, 7), None, None, "SLICE"),  # axes omitted: the leading axes
]


@pytest.mark.parametrize(("starts", "ends", "axes", "steps", "tfl"), SLICES, ids=str)
def test_slice(starts, ends, axes, steps, tfl):
    inits = {"st": _i64(*starts), "en": _i64(*ends)}
    ins = ["x", "st", "en"]
    if axes is not None or steps is not None:
        inits["ax"] = _i64(*(axes if axes is not None else range(len(starts))))
        ins.append("ax")
    if steps is not None:
        inits["sp"] = _i64(*steps)
        ins.append("sp")
    nodes = [helper.make_node("Slice", ins, ["s"]), helper.make_node("Relu", ["s"], ["y"])]
    model = make_model(nodes, {"x": X}, ["y"], inits)
    assert check_parity(model, {"x": X}, resolvers=BOTH) == {tfl: 1, "RELU": 1}


def test_slice_attributes_opset9():
    node = helper.make_node("Slice", ["x"], ["y"], starts=[1, -4], ends=[3, 100], axes=[1, 2])
    model = make_model([node], {"x": X}, ["y"], opset=9)
    assert check_parity(model, {"x": X}) == {"SLICE": 1}


def test_channel_slice_runs_on_xnnpack():
    inits = {"st": _i64(2), "en": _i64(5), "ax": _i64(1)}
    nodes = [
        helper.make_node("Slice", ["x", "st", "en", "ax"], ["s"]),
        helper.make_node("Relu", ["s"], ["y"]),
    ]
    model = make_model(nodes, {"x": X}, ["y"], inits)
    assert _outside_xnnpack(convert_model(model)[0]) == []


def _computed_index(name: str) -> list[onnx.NodeProto]:
    """Nodes making int64 ``name`` of shape [1] from the activation (data-dependent)."""
    return [
        helper.make_node("ReduceMax", ["x", "all"], [f"{name}_f"], keepdims=0),
        helper.make_node("Cast", [f"{name}_f"], [name], to=onnx.TensorProto.INT64),
    ]


# ----- Gather ---------------------------------------------------------------------------------

GATHERS = [
    # indices, axis, expected op counts (graph output in ONNX order)
    (np.int64(2), 1, {"SLICE": 1, "RESHAPE": 1}),  # drop a channel: no TRANSPOSE
    (np.int64(-1), 3, None),
    (np.int64(0), 2, None),
    (_i64(1, 2, 3), 1, {"SLICE": 1}),
    (_i64(0, 2, 4), 1, {"SLICE": 3, "CONCATENATION": 1}),
    (_i64(4, 0, 1), 1, {"SLICE": 2, "CONCATENATION": 1}),  # runs [4] and [0, 1]
    (_i64(-1, 0), 2, {"SLICE": 2, "CONCATENATION": 1}),
    (_i64(4, 0, 3, 1, 5), 1, {"GATHER": 1}),  # five runs: one GATHER beats five SLICEs
    (np.asarray([[0, 2], [1, 1]], np.int64), 1, None),
]


@pytest.mark.parametrize(("indices", "axis", "ops"), GATHERS, ids=str)
def test_gather(indices, axis, ops):
    nodes = [helper.make_node("Gather", ["x", "i"], ["g"], axis=axis)]
    nodes.append(helper.make_node("Relu", ["g"], ["y"]))
    model = make_model(nodes, {"x": X}, ["y"], {"i": indices})
    counts = check_parity(model, {"x": X}, resolvers=BOTH)
    counts.pop("RELU")
    if ops is not None:
        assert counts == ops
    if "GATHER" not in counts and "TRANSPOSE" not in counts:
        assert _outside_xnnpack(convert_model(model)[0]) == []


def test_gather_many_evenly_spaced_indices_is_one_strided_slice():
    shape = (1, 12, 3, 3)
    nodes = [helper.make_node("Gather", ["x", "i"], ["y"], axis=1)]
    model = make_model(nodes, {"x": shape}, ["y"], {"i": _i64(0, 2, 4, 6, 8, 10)})
    assert check_parity(model, {"x": shape}, resolvers=BOTH) == {"STRIDED_SLICE": 1}


def test_gather_class_token_rank3():
    """A ViT-style head: token 0 of [N, T, D]."""
    nodes = [helper.make_node("Gather", ["x", "i"], ["y"], axis=1)]
    model = make_model(nodes, {"x": (1, 5, 8)}, ["y"], {"i": np.int64(0)})
    assert check_parity(model, {"x": (1, 5, 8)}, resolvers=BOTH) == {"SLICE": 1, "RESHAPE": 1}


def test_gather_of_one_run_shaped_like_a_map_is_a_slice():
    """convnext's flatten exports as as_strided: a Gather of arange(C) shaped [1, C, 1, 1] from
    the flat features. One run of indices is a SLICE (+ RESHAPE), which XNNPACK runs; a GATHER
    would leave the head outside the delegate."""
    shape = (1, 6, 1, 1)
    nodes = [
        helper.make_node("Reshape", ["x", "flat"], ["f"]),
        helper.make_node("Gather", ["f", "i"], ["g"], axis=0),
        helper.make_node("Relu", ["g"], ["y"]),
    ]
    inits = {"flat": _i64(6), "i": np.arange(6, dtype=np.int64).reshape(1, 6, 1, 1)}
    model = make_model(nodes, {"x": shape}, ["y"], inits)
    counts = check_parity(model, {"x": shape}, resolvers=BOTH)
    assert "GATHER" not in counts and counts.get("SLICE", 0) <= 1
    assert _outside_xnnpack(convert_model(model)[0]) == []


def test_gather_with_live_indices_is_refused():
    nodes = [*_computed_index("i"), helper.make_node("Gather", ["x", "i"], ["y"], axis=1)]
    model = make_model(nodes, {"x": X}, ["y"], {"all": _i64(1, 2, 3)})
    with pytest.raises(UnsupportedOpsError, match="the indices must be a constant"):
        convert_model(model)


# ----- channel shuffle --------------------------------------------------------------------------


def _shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape  # torchvision's channel_shuffle
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2's stride-1 unit twice: split, branch, concat, shuffle."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(c // 2, c // 2, 1),
                nn.ReLU(),
                nn.Conv2d(c // 2, c // 2, 3, padding=1, groups=c // 2),
                nn.Conv2d(c // 2, c // 2, 1),
                nn.ReLU(),
            )
            for _ in range(2)
        )
        self.head = nn.Conv2d(c, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for branch in self.branches:
            a, b = x.chunk(2, dim=1)
            x = _shuffle(torch.cat((a, branch(b)), dim=1), 2)
        return self.head(x)


class GroupShuffle(nn.Module):
    """ShuffleNetV1-style: a grouped conv, then a shuffle of its output (no Concat)."""

    def __init__(self, groups: int = 3) -> None:
        super().__init__()
        self.groups = groups
        self.conv = nn.Conv2d(3, 4 * groups, 3, padding=1)
        self.grouped = nn.Conv2d(4 * groups, 4 * groups, 1, groups=groups)
        self.head = nn.Conv2d(4 * groups, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(_shuffle(self.grouped(self.conv(x)), self.groups)))


CHW = (3, 8, 6)


def _randomize(module: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for p in module.parameters():
        p.data.uniform_(-0.5, 0.5)
    return module.eval()


@pytest.mark.parametrize(
    ("module", "extra"),
    [
        (ShuffleUnit(), {"SPLIT": 2, "CONCATENATION": 2}),
        (GroupShuffle(3), {"SPLIT": 1, "CONCATENATION": 1}),
        (GroupShuffle(8), {"SLICE": 8}),  # XNNPACK's SPLIT stops at 4 outputs
    ],
    ids=["shufflenet_v2_unit", "group_conv_shuffle3", "group_conv_shuffle8"],
)
def test_channel_shuffle_has_no_transpose(module, extra, tmp_path):
    path = export_onnx(_randomize(module), CHW, tmp_path / "m.onnx")
    model = onnx.load(str(path))
    assert [n.op_type for n in model.graph.node].count("Transpose") >= 1  # torch's shuffle
    counts = check_parity(model, {"input": (1, *CHW)}, resolvers=BOTH)
    assert "TRANSPOSE" not in counts and "GATHER" not in counts
    assert all(counts.get(op) == k for op, k in extra.items()), counts
    assert _outside_xnnpack(convert_model(model)[0]) == []


class InputShuffle(nn.Module):
    """A shuffle of integers both runtimes quantize identically (the graph input), then one
    conv: the int8 result may differ from ORT's only by that conv's rounding."""

    def __init__(self, groups: int, concat: bool) -> None:
        super().__init__()
        self.groups, self.concat = groups, concat
        self.conv = nn.Conv2d(6, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Through a Concat, so that ORT quantizes the input; its two halves are the shuffle's
        # groups when groups == 2 (ShuffleNetV2), and are not when groups == 3 (SPLIT first).
        a, b = x.chunk(2, dim=1)
        x = torch.cat((b, a), dim=1) if self.concat else torch.cat((a, b), dim=1)
        return self.conv(_shuffle(x, self.groups))


@pytest.mark.parametrize(
    ("groups", "concat"), [(2, True), (3, False)], ids=["concat_groups2", "split_groups3"]
)
def test_channel_shuffle_int8_matches_ort_qdq(groups, concat, tmp_path):
    chw = (6, 8, 6)
    _, int8 = qdq_model(_randomize(InputShuffle(groups, concat)), chw, tmp_path)
    result = convert_onnx_file(int8, tmp_path / "m.tflite", io_dtype="int8")
    assert result.float_fallback_ops == [] and result.transpose_count == 0
    data = result.path.read_bytes()
    x = np.random.default_rng(1).standard_normal((6, *chw)).astype(np.float32)
    ref = ort_probe(int8, x)
    for resolver in BOTH:
        runner = TfliteRunner(data, resolver)
        err = float(np.abs(runner(x) - ref).max())
        assert err <= 1.01 * runner.out["quantization"][0], f"{resolver}: {err}"
    assert _outside_xnnpack(data) == []


def test_shufflenet_unit_int8_is_integer_and_delegated(tmp_path):
    _, int8 = qdq_model(_randomize(ShuffleUnit()), CHW, tmp_path)
    result = convert_onnx_file(int8, tmp_path / "m.tflite", io_dtype="int8")
    assert result.float_fallback_ops == [] and result.transpose_count == 0
    assert result.op_counts["SPLIT"] == 2
    data = result.path.read_bytes()
    # Numbers: test_channel_shuffle_int8_matches_ort_qdq (chained convs amplify each kernel's
    # own 1-LSB rounding differences, so a whole network is no sharper check).
    assert _outside_xnnpack(data) == []


# ----- int8 per op --------------------------------------------------------------------------------


class Pick(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.conv, self.fn = nn.Conv2d(3, 6, 3, padding=1), fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.conv(x))


INT8_CASES = [
    ("split_sizes", lambda y: torch.split(y, [2, 4], 1)[1], "Split", "SLICE"),
    ("chunk", lambda y: y.chunk(3, 1)[2], "Split", "SPLIT"),
    ("slice", lambda y: y[:, 1:4, 1:], "Slice", "SLICE"),
    ("strided_slice", lambda y: y[:, :, ::2], "Slice", "STRIDED_SLICE"),
    ("select", lambda y: y[:, 2], "Gather", "SLICE"),
    ("index_runs", lambda y: torch.index_select(y, 1, torch.tensor([4, 0, 1])), "Gather", "SLICE"),
    (
        "index_any",
        lambda y: torch.index_select(y, 1, torch.tensor([4, 0, 3, 1, 5])),
        "Gather",
        "GATHER",
    ),
]


@pytest.mark.parametrize(
    ("fn", "probe", "tfl"), [c[1:] for c in INT8_CASES], ids=[c[0] for c in INT8_CASES]
)
def test_int8_selection_keeps_parameters(fn, probe, tfl, tmp_path):
    """Selections move integers: the int8 result equals ORT's QDQ result to the LSB and the
    output keeps the conv's scale and zero point."""
    _, int8 = qdq_model(_randomize(Pick(fn)), CHW, tmp_path)
    result = convert_onnx_file(int8, tmp_path / "m.tflite", io_dtype="int8")
    assert result.float_fallback_ops == [] and result.transpose_count == 0
    assert tfl in result.op_counts, result.op_counts
    data = result.path.read_bytes()
    x = np.random.default_rng(1).standard_normal((6, *CHW)).astype(np.float32)
    ref = ort_probe(int8, x)
    model = onnx.load(str(int8))
    assert probe in {n.op_type for n in model.graph.node}  # the op under test was exported
    assert not ort_probe_is_float(int8, "conv2d")  # ORT rounds the selection's input to int8
    for resolver in BOTH:
        runner = TfliteRunner(data, resolver)
        scale = runner.out["quantization"][0]
        err = float(np.abs(runner(x) - ref).max())
        assert err <= 1.01 * scale, f"{resolver}: {err} > {scale}"
    assert np.isclose(TfliteRunner(data).out["quantization"][0], _qdq_scale(model, "conv2d"))


def _qdq_scale(model: onnx.ModelProto, value: str) -> float:
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == value)
    return float(inits[q.input[1]])


# ----- adaptive average pooling on small maps ----------------------------------------------------


class SmallMapHead(nn.Module):
    """vgg / alexnet's head on a small input: conv features -> AdaptiveAvgPool2d -> Linear."""

    def __init__(self, out: tuple[int, int], c: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, c, 1)
        self.pool = nn.AdaptiveAvgPool2d(out)
        self.fc = nn.Linear(c * out[0] * out[1], 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))


POOLS = [
    ((2, 2), (7, 7)),  # vgg11_bn at 64x64
    ((1, 1), (6, 6)),  # alexnet at 64x64
    ((3, 2), (7, 5)),
    ((10, 9), (7, 7)),  # shrinking, but not by a whole factor
]


@pytest.mark.parametrize(("hw", "out"), POOLS, ids=str)
def test_adaptive_avg_pool_on_small_map_is_one_batch_matmul(hw, out, tmp_path):
    path = export_onnx(_randomize(SmallMapHead(out)), (3, *hw), tmp_path / "m.onnx")
    model = onnx.load(str(path))
    assert "GatherND" in {n.op_type for n in model.graph.node}  # what torch writes
    counts = check_parity(model, {"input": (1, 3, *hw)}, resolvers=BOTH)
    assert counts.get("BATCH_MATMUL") == 1 and "TRANSPOSE" not in counts, counts
    assert set(counts) <= {"CONV_2D", "BATCH_MATMUL", "RESHAPE", "FULLY_CONNECTED"}, counts
    assert _outside_xnnpack(convert_model(model)[0]) == []


def _quantized_inner_scales(model: onnx.ModelProto, ops: set[str]) -> list[float]:
    """Scales of the QuantizeLinear nodes that round outputs of ``ops``."""
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    return [
        float(inits[n.input[1]])
        for n in model.graph.node
        if n.op_type == "QuantizeLinear"
        and n.input[0] in producers
        and producers[n.input[0]].op_type in ops
    ]


def test_adaptive_avg_pool_int8(tmp_path):
    """The pooled map of the int8 model is the exact adaptive average (torch's) of the int8
    model's own features, to one LSB; against ORT's QDQ model it differs by at most the roundings
    ORT makes on the decomposition's intermediates (each Gather / Add output), half a step each."""
    c = 8
    _, int8 = qdq_model(_randomize(SmallMapHead((7, 7), c)), (3, 2, 2), tmp_path)
    result = convert_onnx_file(int8, tmp_path / "m.tflite", io_dtype="int8")
    # XNNPACK has no int8 BATCH_MATMUL: it runs in float between (delegated) DEQUANTIZE/QUANTIZE.
    assert result.float_fallback_ops == ["BATCH_MATMUL"] and result.transpose_count == 0
    data = result.path.read_bytes()
    assert _outside_xnnpack(data) == []
    x = np.random.default_rng(1).standard_normal((6, 3, 2, 2)).astype(np.float32)
    runner = TfliteRunner(data, "builtin", preserve=True)
    features = runner(x, "relu")  # NCHW, dequantized
    # The FC input is the flatten of the NHWC map: columns in (h, w, c) order.
    fc = next(op for op in runner.it._get_ops_details() if op["op_name"] == "FULLY_CONNECTED")
    detail = runner.it.get_tensor_details()[fc["inputs"][0]]
    pooled = runner(x, detail["name"]).reshape(6, 7, 7, c).transpose(0, 3, 1, 2).reshape(6, -1)
    scale, zp = detail["quantization"]
    exact = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(features), (7, 7))
    exact_q = (np.clip(np.rint(exact.numpy().reshape(6, -1) / scale) + zp, -128, 127) - zp) * scale
    assert np.abs(pooled - exact_q).max() <= 1.01 * scale
    inner = _quantized_inner_scales(onnx.load(str(int8)), {"Gather", "Add"})
    assert inner, "ORT's QDQ model rounds the decomposition's intermediates"
    ort_pooled = ort_probe(int8, x, "view")
    assert np.abs(pooled - ort_pooled).max() <= 1.01 * scale + 0.5 * sum(inner)
    xnn = TfliteRunner(data, "xnnpack")(x)
    assert np.abs(xnn - runner(x)).max() <= 1.01 * runner.out["quantization"][0]


def test_spatial_lookalike_that_is_not_linear_is_left_to_preflight():
    """A GatherND whose masked fill is 1, not 0, is affine: it is not rewritten, and pre-flight
    says what is supported instead."""
    idx = np.asarray([[[0, 0], [1, 1]]], np.int64)  # [1, 2, 2]: diagonal of the H x W plane
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[2, 3, 0, 1]),
        helper.make_node("GatherND", ["t", "i"], ["g"]),  # [1, 2, N, C]
        helper.make_node("Transpose", ["g"], ["p"], perm=[2, 3, 0, 1]),  # [N, C, 1, 2]
        helper.make_node("Where", ["m", "one", "p"], ["y"]),
    ]
    inits = {"i": idx, "m": np.asarray([[True, False]]), "one": np.float32(1.0)}
    shape = (1, 3, 2, 2)
    model = make_model(nodes, {"x": shape}, ["y"], inits)
    feeds = random_feeds({"x": shape})
    assert run_ort(model, feeds)["y"].shape == (1, 3, 1, 2)
    with pytest.raises(UnsupportedOpsError, match=r"GatherND: only the GatherND of Adaptive"):
        convert_model(model)
