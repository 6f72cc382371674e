"""Bad models, weights and model files (issue #14): code in a `.pt2`, NaN weights, a diverging
`train`, models with nothing to prune or a dict output, ONNX external data outside its folder,
NaN activations at calibration, and model files that exit, parse argv or import a neighbour.

The harness (tests/robustness/harness.py) checks every case: one ``error:`` line naming the
problem, exit code 2, nothing written, no temp file left.
"""

from __future__ import annotations

import contextlib
import io
import json
import textwrap
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from runtime_check.batch import load_batch
from tests.helpers import invoke
from tests.robustness.harness import Call, Ctx, check_case
from tests.robustness.options import FAST, FP32_ONLY

# ------------------------------------------------------------------------------ .pt2 payloads


class _Payload:
    """Unpickling this runs code: it creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _seed_pt2() -> bytes:
    from exporter.models.zoo import SeedCNN

    buf = io.BytesIO()
    program = torch.export.export(SeedCNN(1, (8, 8), 10).eval(), (torch.zeros(1, 1, 8, 8),))
    torch.export.save(program, buf)
    return buf.getvalue()


def _rewrite_zip(data: bytes, edit: Callable[[dict[str, bytes]], None]) -> bytes:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        files = {n: z.read(n) for n in z.namelist()}
    edit(files)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for name, content in files.items():
            z.writestr(name, content)
    return out.getvalue()


def _one(files: dict[str, bytes], suffix: str) -> str:
    return next(n for n in files if n.endswith(suffix))


def _pickled_weight(marker: Path) -> bytes:
    """The seed CNN's .pt2 with its first weight stored as a pickle that creates ``marker``."""

    def edit(files):
        config_name = _one(files, "data/weights/model_weights_config.json")
        config = json.loads(files[config_name])
        entry = config["config"]["features.0.weight"]
        entry["use_pickle"] = True
        buf = io.BytesIO()
        torch.save(_Payload(marker), buf)
        files[config_name.replace("model_weights_config.json", entry["path_name"])] = buf.getvalue()
        files[config_name] = json.dumps(config).encode()

    return _rewrite_zip(_seed_pt2(), edit)


def _opaque_constant(marker: Path) -> bytes:
    """The seed CNN's .pt2 with an 'opaque object' constant: torch reads it with pickle.loads."""
    import pickle

    def edit(files):
        config_name = _one(files, "data/constants/model_constants_config.json")
        files[config_name.replace("model_constants_config.json", "opaque_obj_0")] = pickle.dumps(
            _Payload(marker)
        )
        entry = {
            "path_name": "opaque_obj_0",
            "is_param": False,
            "use_pickle": True,
            "tensor_meta": None,
        }
        files[config_name] = json.dumps({"config": {"evil": entry}}).encode()

    return _rewrite_zip(_seed_pt2(), edit)


def _aoti(_marker: Path) -> bytes:
    """A .pt2 that carries an AOTInductor folder: torch would dlopen the shared library in it."""

    def edit(files):
        root = _one(files, "archive_format").split("/")[0]
        files[f"{root}/data/aotinductor/model/model.so"] = b"\x7fELF not really"

    return _rewrite_zip(_seed_pt2(), edit)


def _unsafe_load_runs(build: Callable[[Path], bytes], ctx: Ctx) -> None:
    """The same payload does run under a plain torch.export.load: the case can fail."""
    probe = ctx.tmp.parent / f"{ctx.tmp.name}-probe"
    # The payload returns None instead of a tensor, so the load may fail: it has run by then.
    with contextlib.suppress(Exception):
        torch.export.load(io.BytesIO(build(probe)))
    assert probe.exists(), "the payload does not run: the case would prove nothing"
    probe.unlink()


def _pt2_payload(build: Callable[[Path], bytes], fragments: tuple[str, ...], live: bool = True):
    def builder(ctx: Ctx) -> Call:
        marker = ctx.tmp.parent / f"{ctx.tmp.name}-PWNED"
        path = ctx.write("evil.pt2", build(marker))
        if live:
            _unsafe_load_runs(build, ctx)

        def after(_res):
            assert not marker.exists(), "loading the .pt2 ran the pickle's code"

        return Call(ctx.run("--model", path), ("evil.pt2", *fragments), after=after, process=True)

    return builder


# ------------------------------------------------------------------------------ weights


def _state_dict_file(ctx: Ctx, name: str, edit: Callable[[dict], None], protocol: int = 2):
    state = torch.load(ctx.weights, weights_only=True)
    edit(state)
    path = ctx.tmp / name
    torch.save(state, path, pickle_protocol=protocol)
    return path


def _nan_weights(ctx: Ctx) -> Call:
    def edit(state):
        state["features.0.weight"][0, 0, 0, 0] = float("nan")
        state["classifier.3.weight"][1, 2] = float("inf")

    path = _state_dict_file(ctx, "nan.pt", edit)
    # The sidecar is the seed's: only the tensors are wrong.
    ctx.write("nan.pt.json", Path(f"{ctx.weights}.json").read_bytes())
    return Call(
        ctx.run("--model", "seed-cnn", "--weights", path),
        ("nan.pt", "not finite", "features.0.weight", "classifier.3.weight"),
    )


def _protocol5_with_code(ctx: Ctx) -> Call:
    marker = ctx.tmp.parent / f"{ctx.tmp.name}-PWNED"
    path = ctx.tmp / "evil5.pt"
    torch.save({"features.0.weight": _Payload(marker)}, path, pickle_protocol=5)

    def after(_res):
        assert not marker.exists(), "the protocol-5 pickle's code ran"

    return Call(
        ctx.run("--model", "seed-cnn", "--weights", path),
        ("evil5.pt: refused", "code is never run"),
        after=after,
        process=True,
    )


# ------------------------------------------------------------------------------ model files

NETS = textwrap.dedent("""
    import torch
    from torch import nn

    class Tiny(nn.Module):  # one conv, one fc: the default prune.exclude leaves nothing
        def __init__(self, in_channels=1, num_classes=10):
            super().__init__()
            self.conv = nn.Conv2d(in_channels, 4, 3, padding=1)
            self.fc = nn.Linear(4, num_classes)
        def forward(self, x):
            return self.fc(self.conv(x).mean((2, 3)))

    class Named(Tiny):  # returns a dict
        def forward(self, x):
            return {"logits": super().forward(x)}

    class NanHidden(Tiny):  # NaN activations, finite logits: calibration cannot pick a scale
        def forward(self, x):
            h = self.conv(x + torch.nan_to_num(x * float("nan")))  # no NaN gradient to learn
            return self.fc(h.mean((2, 3)))

    class InfHidden(Tiny):  # Inf activations, finite logits: int8 scales would be infinite
        def forward(self, x):
            h = self.conv(x) * 1e30 * 1e30
            return self.fc(torch.clamp(h, -1, 1).mean((2, 3)))
""")


def _nets(ctx: Ctx, name: str) -> str:
    return f"{ctx.write('nets.py', NETS)}:{name}"


def _model_file(body: str) -> Callable[[Ctx], Path]:
    def write(ctx: Ctx) -> Path:
        return ctx.write("net.py", textwrap.dedent(body))

    return write


_EXITS = _model_file("""
    import sys
    sys.exit(0)
""")
_OS_EXIT = _model_file("""
    import os
    os._exit(0)
""")
_ARGPARSE = _model_file("""
    import argparse
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, required=True)
    args = parser.parse_args()
""")


# ------------------------------------------------------------------------------ ONNX


def _onnx_outside(ctx: Ctx) -> Call:
    """An initializer whose external data is '../secret.bin': a file outside the model's folder."""
    (ctx.tmp / "secret.bin").write_bytes(np.arange(64, dtype=np.float32).tobytes())
    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1, 1, 8, 8])
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../secret.bin"), ("offset", "0"), ("length", "256")):
        weight.external_data.add(key=key, value=value)
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["input", "w"], ["m"]),
            helper.make_node("Flatten", ["m"], ["f"]),
            helper.make_node("Slice", ["f", "s", "e", "a"], ["logits"]),
        ],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [
            weight,
            numpy_helper.from_array(np.array([0], np.int64), "s"),
            numpy_helper.from_array(np.array([10], np.int64), "e"),
            numpy_helper.from_array(np.array([1], np.int64), "a"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    (ctx.tmp / "m").mkdir()
    path = ctx.tmp / "m" / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return Call(ctx.run("--model", path), ("model.onnx", "../secret.bin", "outside"))


# ------------------------------------------------------------------------------ the catalogue

_INT8 = (
    "--set",
    "compress.prune.sparsity=0",
    "--set",
    "compress.finetune.epochs=0",
    "--set",
    'export.precisions=["int8"]',
    "--set",
    'export.formats=["onnx"]',  # TFLite has no IsNaN: the ONNX int8 path is the one under test
)
_CALIBRATION = ("int8 calibration", "not finite")

CASES: list[tuple[str, Callable[[Ctx], Call]]] = [
    (
        "model/pt2-pickled-weight-with-code",
        _pt2_payload(_pickled_weight, ("refused", "pickle", "code is never run")),
    ),
    (
        "model/pt2-opaque-object-with-code",
        _pt2_payload(_opaque_constant, ("refused", "pickled object", "code is never run")),
    ),
    (
        "model/pt2-aoti-native-code",
        _pt2_payload(_aoti, ("refused", "compiled native code"), live=False),
    ),
    ("model/state-dict-nan-inf", _nan_weights),
    ("model/state-dict-protocol5-with-code", _protocol5_with_code),
    (
        "model/nothing-to-prune",
        lambda c: Call(
            c.run("--model", _nets(c, "Tiny"), "--set", "compress.prune.sparsity=0.5"),
            ("compress.prune", "no layer left to prune", "first_conv", "last_fc"),
        ),
    ),
    (
        "model/output-dict-first-tensor(ok)",
        lambda c: Call(
            c.run("--model", _nets(c, "Named"), "--set", "compress.prune.sparsity=0"), (), ok=True
        ),
    ),
    (
        "model/file-calls-sys-exit",
        lambda c: Call(c.run("--model", f"{_EXITS(c)}:Net"), ("net.py", "exited", "sys.exit(0)")),
    ),
    (
        "model/file-calls-os-exit",
        lambda c: Call(
            c.run("--model", f"{_OS_EXIT(c)}:Net"),
            ("net.py", "os._exit(0)"),
            process=True,
        ),
    ),
    (
        "model/file-parses-argv",
        lambda c: Call(
            c.run("--model", f"{_ARGPARSE(c)}:Net"),
            ("net.py", "exited", "command-line arguments"),
            process=True,
            after=lambda res: _no_foreign_usage(res.output),
        ),
    ),
    ("model/onnx-external-data-outside-folder", _onnx_outside),
    (
        "data/calibration-nan-activations",
        lambda c: Call(c.run("--model", _nets(c, "NanHidden"), *_INT8), _CALIBRATION),
    ),
    (
        "data/calibration-inf-activations",
        # Found before anything is written: the exported graph's check sees the overflow.
        lambda c: Call(
            c.run("--model", _nets(c, "InfHidden"), *_INT8), ("activations are not finite",)
        ),
    ),
]


def _no_foreign_usage(output: str) -> None:
    assert "usage:" not in output, f"the model file's own usage was printed:\n{output}"


@pytest.mark.parametrize("builder", [b for _, b in CASES], ids=[i for i, _ in CASES])
def test_case(builder, tmp_path, request, monkeypatch):
    check_case(builder, tmp_path, request, monkeypatch)


# ------------------------------------------------------------------------------ beyond the harness


def test_protocol_4_and_5_state_dicts_load_like_protocol_2(seed_weights, tmp_path):
    """A plain state_dict saved with a newer pickle protocol gives the same model, no warning."""
    from exporter.models.loading import load_weights
    from exporter.models.zoo import SeedCNN

    state = torch.load(seed_weights, weights_only=True)
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    reference = SeedCNN(1, (8, 8), 10).eval()
    reference.load_state_dict(state)
    for protocol in (4, 5):
        path = tmp_path / f"p{protocol}.pt"
        torch.save(state, path, pickle_protocol=protocol)
        model = SeedCNN(1, (8, 8), 10).eval()
        with _no_warnings():
            load_weights(model, path)
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)


class _no_warnings:
    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings(record=True)
        self.seen = self._ctx.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)
        assert not self.seen, [str(w.message) for w in self.seen]


def test_protocol5_run_prints_no_torch_warning(tmp_path, seed_weights):
    """`run --weights p5.pt` in a real process: no torch warning on stderr (exit 0)."""
    from tests.robustness.harness import run_process

    state = torch.load(seed_weights, weights_only=True)
    path = tmp_path / "p5.pt"
    torch.save(state, path, pickle_protocol=5)
    (tmp_path / "p5.pt.json").write_bytes(Path(f"{seed_weights}.json").read_bytes())
    res = run_process(
        [
            "run",
            "--model",
            "seed-cnn",
            "--weights",
            path,
            "--out",
            tmp_path / "o",
            "-q",
            *FAST,
            *FP32_ONLY,
        ],
        {},
    )
    assert res.exit_code == 0, res.output
    assert "Warning" not in res.output and "pickle protocol" not in res.output, res.output


def test_train_with_diverging_loss_fails_and_writes_nothing(tmp_path):
    out = tmp_path / "w.pt"
    res = invoke(
        "train",
        "--model",
        "seed-cnn",
        "--data",
        "digits",
        "--epochs",
        "1",
        "--lr",
        "1e6",
        "--out",
        out,
        "-q",
    )
    from tests.helpers import assert_one_line_error

    assert_one_line_error(res, "loss", "not finite", "--lr")
    assert list(tmp_path.iterdir()) == []


def test_train_api_raises_on_diverging_loss(tmp_path):
    import exporter
    from exporter.errors import EdgepackError

    with pytest.raises(EdgepackError, match="not finite"):
        exporter.train("seed-cnn", data="digits", out=tmp_path / "w.pt", epochs=1, lr=1e6)
    assert list(tmp_path.iterdir()) == []


def test_model_file_imports_its_neighbour_and_sys_state_is_restored(tmp_path):
    """A model file imports a module beside it; sys.path and sys.argv are as before after."""
    import sys

    from exporter.models.loading import load_model

    ctx_path = tmp_path / "proj"
    ctx_path.mkdir()
    (ctx_path / "blocks.py").write_text(
        "from torch import nn\n\ndef head(n):\n    return nn.Linear(16, n)\n"
    )
    (ctx_path / "net.py").write_text(
        textwrap.dedent("""
            import sys
            from torch import nn
            import blocks
            SEEN_ARGV = list(sys.argv)

            class Net(nn.Module):
                def __init__(self, in_channels=1, num_classes=10):
                    super().__init__()
                    self.conv = nn.Conv2d(in_channels, 16, 3, padding=1)
                    self.head = blocks.head(num_classes)
                def forward(self, x):
                    return self.head(self.conv(x).mean((2, 3)))
        """)
    )
    path_before, argv_before = list(sys.path), list(sys.argv)
    loaded = load_model(f"{ctx_path / 'net.py'}:Net", 1, (8, 8), 10)
    assert loaded.module(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    assert sys.path == path_before and sys.argv == argv_before
    user_module = sys.modules["edgepack_user_net"]
    assert [str(ctx_path / "net.py")] == user_module.SEEN_ARGV


def test_onnx_with_external_data_is_copied_whole(tmp_path, seed_out):
    """A valid model.onnx + model.onnx.data: the output's fp32 ONNX runs on its own (issue #15)."""
    from exporter.onnx.export import onnx_logits

    src = tmp_path / "in"
    src.mkdir()
    model = onnx.load(str(seed_out / "model.fp32.onnx"))
    # Only tensors of 1 KiB and more go out (ORT reads small shape constants inline only).
    onnx.save_model(
        model, str(src / "model.onnx"), save_as_external_data=True, location="model.onnx.data"
    )
    assert (src / "model.onnx.data").stat().st_size > 10_000
    out = tmp_path / "out"
    res = invoke("run", "--model", src / "model.onnx", "--out", out, "-q", *FAST, *FP32_ONLY)
    assert res.exit_code == 0, res.output
    x = load_batch(seed_out / "eval_batch.npz")["inputs"][:8]
    got = onnx_logits(out / "model.fp32.onnx", x)
    np.testing.assert_allclose(got, onnx_logits(seed_out / "model.fp32.onnx", x), atol=1e-5)
