"""The bad-input catalogue: every way a user (or the world) can hand edgepack something wrong.

One parametrised table here, more in the other ``test_*.py`` of this folder that define
``CASES`` (the harness: tests/robustness/harness.py). Each case must end in ONE line
``error: ...`` on stderr that names the problem, exit code 2, no traceback, and must leave the disk as it found it: no artifact, no
``.name.*.tmp`` sibling, no ``edgepack-*`` directory in /tmp, and an existing ``--out`` (given
with ``--force``) untouched. The one case that must succeed (fewer images than the calibration
asks for) says so in the table.

SSH cases use a real sshd on 127.0.0.1 (the ``sshd`` fixture of tests/conftest.py);
QEMU cases need qemu-aarch64 but never a built sysroot. Both skip with the reason when absent.
Ctrl-C is a separate test: it needs a real process to signal.
"""

from __future__ import annotations

import errno
import importlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from tests.helpers import EDGEPACK, ROOT, assert_one_line_error, free_port, invoke
from tests.robustness.harness import (
    Call,
    Ctx,
    check_case,
    digits_like,
    npz,
    random_bytes,
)
from tests.robustness.options import FAST, FP32_ONLY

# ------------------------------------------------------------------------------ model side

NETS = textwrap.dedent("""
    import torch
    from torch import nn

    class Raises(nn.Module):
        def __init__(self):
            raise RuntimeError("the factory is broken")

    def not_a_module():
        return {"weights": 1}

    class FeatureMap(nn.Module):  # returns a 4-D map, not class logits
        def __init__(self, in_channels=1):
            super().__init__()
            self.conv = nn.Conv2d(in_channels, 10, 3, padding=1)
        def forward(self, x):
            return self.conv(x)

    class Pair(FeatureMap):  # returns a tuple
        def forward(self, x):
            y = self.conv(x).mean((2, 3))
            return y, y
""")


class _Payload:
    """Unpickling this runs code: it creates ``marker``. weights_only must refuse to."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _pickle_with_code(ctx: Ctx) -> Call:
    marker = ctx.tmp.parent / f"{ctx.tmp.name}-PWNED"
    evil = ctx.tmp / "evil.pt"
    torch.save({"conv1.weight": _Payload(marker)}, evil)
    # The payload is live: a plain (unsafe) load does run it, into a different marker.
    probe = ctx.tmp.parent / f"{ctx.tmp.name}-probe"
    buf = io.BytesIO()
    torch.save({"x": _Payload(probe)}, buf)
    torch.load(io.BytesIO(buf.getvalue()), weights_only=False)
    assert probe.exists(), "the payload does not run: the case would prove nothing"
    probe.unlink()

    def after(_res):
        assert not marker.exists(), "torch.load ran the pickle's code"

    return Call(
        ctx.run("--model", "seed-cnn", "--weights", evil),
        ("evil.pt: refused by torch.load(weights_only=True)", "code is never run"),
        after=after,
    )


def _state_dict(ctx: Ctx, name: str, edit: Callable[[dict], None]) -> Path:
    state = torch.load(ctx.weights, weights_only=True)
    edit(state)
    path = ctx.tmp / name
    torch.save(state, path)
    return path


def _onnx_model(
    ctx: Ctx,
    name: str,
    nodes: list,
    input_shape: list,
    *,
    pool: bool = False,
    external: bool = False,
) -> Path:
    """input -> [GlobalAveragePool] -> Flatten -> Gemm(-> 10) -> ``nodes`` -> logits, as a file."""
    width = 1 if pool else 64
    # raw_data tensors (from_array): only those can be moved to an external data file.
    w = numpy_helper.from_array(np.ones((width, 10), np.float32) / width, "w")
    b = numpy_helper.from_array(np.zeros(10, np.float32), "b")
    head = (
        [helper.make_node("GlobalAveragePool", ["input"], ["pooled"], name="gap")] if pool else []
    )
    head += [
        helper.make_node("Flatten", ["pooled" if pool else "input"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "w", "b"], ["g0"], name="fc"),
    ]
    graph = helper.make_graph(
        head + nodes,
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    path = ctx.tmp / name
    if external:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=f"{name}.data",
            size_threshold=0,
        )
    else:
        onnx.save_model(model, str(path))
    return path


def _unsupported_ops(ctx: Ctx) -> Call:
    nodes = [
        helper.make_node("Sin", ["g0"], ["s"], name="wave"),
        helper.make_node("Erf", ["s"], ["e"], name="bell"),
        helper.make_node("Sin", ["e"], ["logits"], name="wave2"),
    ]
    path = _onnx_model(ctx, "exotic.onnx", nodes, ["N", 1, 8, 8])
    return Call(
        ctx.run("--model", path, *FP32_ONLY),
        ("3 unsupported node(s)", "Erf x1", "Sin x2", "wave (Sin", "bell (Erf", "wave2 (Sin"),
    )


def _dynamic_spatial(ctx: Ctx) -> Call:
    # Valid for any H, W (global pooling first): the dims are pinned to the data's 8x8.
    nodes = [helper.make_node("Relu", ["g0"], ["logits"], name="relu")]
    path = _onnx_model(ctx, "dyn.onnx", nodes, ["N", 1, "H", "W"], pool=True)

    def pinned(_res) -> None:
        model = json.loads((ctx.out / "report.json").read_text())["model"]
        assert model["adapted"] == ["input dims ['N', 1, 'H', 'W'] pinned to ['N', 1, 8, 8]"]

    return Call(ctx.run("--model", path, *FP32_ONLY), (), ok=True, after=pinned)


def _missing_external_data(ctx: Ctx) -> Call:
    nodes = [helper.make_node("Relu", ["g0"], ["logits"], name="relu")]
    path = _onnx_model(ctx, "ext.onnx", nodes, ["N", 1, 8, 8], external=True)
    (ctx.tmp / "ext.onnx.data").unlink()
    return Call(ctx.run("--model", path), ("external data file 'ext.onnx.data'", "is missing"))


def _pt2(ctx: Ctx) -> Path:
    from exporter.models.zoo import SeedCNN

    path = ctx.tmp / "seed.pt2"
    program = torch.export.export(SeedCNN(1, (8, 8), 10).eval(), (torch.zeros(1, 1, 8, 8),))
    torch.export.save(program, path)
    return path


def _imagefolder_corrupt(ctx: Ctx) -> Call:
    from PIL import Image

    for cls in ("a", "b"):
        (ctx.tmp / "imgs" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("L", (8, 8), 40 * i).save(ctx.tmp / "imgs" / cls / f"{i}.png")
    ctx.write("imgs/b/broken.png", b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    return Call(
        ctx.run("--model", "seed-cnn", "--data", f"imagefolder:{ctx.tmp / 'imgs'}"),
        ("corrupt image", "imgs/b/broken.png"),
    )


def _cifar_wrong_length(ctx: Ctx) -> Call:
    ctx.write("cifar/data_batch_1.bin", random_bytes(3073 * 2 + 100, 3))
    return Call(
        ctx.run("--model", "seed-cnn", "--data", f"cifar10:{ctx.tmp / 'cifar'}"),
        ("data_batch_1.bin: 6246 bytes", "not a whole number of 3073-byte"),
    )


def _nan_npz(ctx: Ctx) -> Call:
    images = np.full((40, 8, 8, 1), 100.0, np.float32)
    images[3, 2, 2, 0] = np.nan
    images[5, 1, 1, 0] = np.inf
    path = npz(ctx, "nan.npz", images, np.arange(40) % 10)
    return Call(
        ctx.run("--model", "seed-cnn", "--data", f"npz:{path}"),
        ("nan.npz: images contain NaN or Inf",),
    )


def _few_calibration_images(ctx: Ctx) -> Call:
    path = npz(ctx, "few.npz", *digits_like(60))

    def after(_res):
        report = json.loads((ctx.out / "report.json").read_text())
        used = report["data"]["train_images"]
        assert used < 256
        assert report["quantization"]["calibration"] == (
            f"only {used} training images (recipe asks for 256): calibrated on all of them"
        )

    return Call(
        [
            "run",
            "--model",
            "seed-cnn",
            "--data",
            f"npz:{path}",
            "--out",
            ctx.out,
            "--force",
            "-q",
            *FAST,
            "--set",
            'export.formats=["onnx"]',
            "--set",
            'export.storage=["dense"]',
        ],
        (),
        ok=True,
        after=after,
    )


# ------------------------------------------------------------------------------ recipe side


def _extends_cycle(ctx: Ctx) -> Call:
    ctx.write("a.toml", 'extends = "b.toml"\ndescription = "a"\n')
    ctx.write("b.toml", 'extends = "a.toml"\ndescription = "b"\n')
    return Call(ctx.seeded("--target", ctx.tmp / "a.toml"), ("'extends' cycle",))


# ------------------------------------------------------------------------------ target side


def _need_qemu() -> str | None:
    return None if shutil.which("qemu-aarch64") else "qemu-aarch64 not installed"


def _broken_sysroot(ctx: Ctx) -> Call:
    root = ctx.tmp / "cache" / "arm64"
    (root / "sysroot").mkdir(parents=True)
    (root / "stamp.json").write_text(json.dumps({"format": 1}))
    return Call(
        ctx.seeded("--target", "rpi4-qemu"),
        ("unusable", "edgepack target setup arm64 --force"),
        env={"EDGEPACK_CACHE": str(ctx.tmp / "cache")},
        skip=_need_qemu(),
    )


def _ssh(ctx: Ctx, *, host: str | None = None, config: str = "good", extra=()) -> list:
    """`edgepack check` of a private copy of the session's output over SSH."""
    if host is None:
        host, _ = ctx.fixture("sshd")
    cfg = config if Path(config).is_absolute() else ctx.fixture("sshd")[1] / f"ssh_config.{config}"
    out = ctx.copy_out()
    return [
        "check",
        out,
        "--target",
        "rpi5",
        "--host",
        host,
        "-q",
        "--set",
        f'device.ssh_options=["-F","{cfg}"]',
        "--set",
        "device.connect_timeout_s=5",
        "--set",
        "runtime.runs=5",
        "--set",
        "runtime.warmup=1",
        *extra,
    ]


def _ssh_closed_port(ctx: Ctx) -> Call:
    # No sshd needed: nothing listens on a just-freed loopback port.
    ctx.write("ssh_config", "Host *\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n")
    return Call(
        _ssh(ctx, host=f"nobody@127.0.0.1:{free_port()}", config=str(ctx.tmp / "ssh_config")),
        ("unreachable", "Connection refused"),
    )


def _ssh_auth_refused(ctx: Ctx) -> Call:
    _, d = ctx.fixture("sshd")
    cfg = ctx.write(
        "ssh_config",
        (d / "ssh_config.good")
        .read_text()
        .replace(f"IdentityFile {d / 'id'}", f"IdentityFile {d / 'otherkey'}"),
    )
    return Call(_ssh(ctx, config=str(cfg)), ("authentication refused", "ssh-copy-id"))


def _fake_python(ctx: Ctx, body: str) -> Path:
    """A 'python3' on the device: a shell script in front of this interpreter."""
    path = ctx.write("fakepy", f'#!/bin/sh\n{body}\nexec {sys.executable} "$@"\n')
    path.chmod(0o755)
    return path


def _ssh_no_runtime(ctx: Ctx) -> Call:
    # numpy is there, but importing either runtime fails, as on a device where none is installed.
    block = ctx.tmp / "block"
    for mod in ("onnxruntime", "ai_edge_litert", "tflite_runtime"):
        ctx.write(f"block/{mod}/__init__.py", f"raise ImportError('no {mod} on this device')\n")
    py = _fake_python(ctx, f'export PYTHONPATH="{block}"')
    return Call(
        _ssh(ctx, extra=("--set", f'device.python="{py}"')),
        # Both runtimes the artifacts need are named, in one line.
        (
            "onnxruntime is not installed for",
            "there (pip install onnxruntime)",
            "no TFLite runtime",
        ),
    )


def _ssh_hangs(ctx: Ctx) -> Call:
    # The probe (python -c ...) answers; the check itself never does.
    py = _fake_python(ctx, 'case "$*" in *runtime_check*) exec sleep 300;; esac')
    started = time.monotonic()

    def after(_res):
        assert time.monotonic() - started < 30, "the timeout did not fire in time"

    return Call(
        _ssh(ctx, extra=("--set", f'device.python="{py}"', "--set", "device.timeout_s=2")),
        # One check of all the artifacts: its limit is device.timeout_s per artifact.
        ("runtime_check timed out after",),
        after=after,
    )


# The catalogue: (id, builder). Ids say side and case; every case appears exactly once.
CASES: list[tuple[str, Callable[[Ctx], Call]]] = [
    # --- model side
    (
        "model/missing-file",
        lambda c: Call(
            c.run("--model", c.tmp / "nope.onnx"), ("model file", "nope.onnx not found")
        ),
    ),
    (
        "model/onnx-truncated",
        lambda c: Call(
            c.run(
                "--model",
                c.write(
                    "cut.onnx", (c.fixture("seed_out") / "model.fp32.onnx").read_bytes()[:5000]
                ),
            ),
            ("cut.onnx: not a valid ONNX model",),
            process=True,
        ),
    ),
    (
        "model/onnx-random-bytes",
        lambda c: Call(
            c.run("--model", c.write("noise.onnx", random_bytes(4096, 1))),
            ("noise.onnx: not a valid ONNX model",),
        ),
    ),
    (
        "model/tflite-truncated(inspect)",
        lambda c: Call(
            [
                "inspect",
                c.write(
                    "cut.tflite", (c.fixture("seed_out") / "model.fp32.tflite").read_bytes()[:3000]
                ),
            ],
            ("cut.tflite: not a valid TFLite model",),
        ),
    ),
    (
        "model/tflite-random-bytes(inspect)",
        lambda c: Call(
            ["inspect", c.write("noise.tflite", random_bytes(4096, 2))],
            ("noise.tflite: not a valid TFLite model",),
            process=True,
        ),
    ),
    (
        "model/pt-truncated",
        lambda c: Call(
            c.run(
                "--model", "seed-cnn", "--weights", c.write("cut.pt", c.weights.read_bytes()[:900])
            ),
            ("cut.pt: not a readable torch weights file",),
            process=True,
        ),
    ),
    (
        "model/pt-random-bytes",
        lambda c: Call(
            c.run("--model", "seed-cnn", "--weights", c.write("noise.pt", random_bytes(4096, 3))),
            # Random bytes read as a pickle stream: refused at the first opcode, never executed.
            ("noise.pt: refused by torch.load", "not a plain state_dict"),
        ),
    ),
    (
        "model/pt2-truncated",
        lambda c: Call(
            c.run("--model", c.write("cut.pt2", _pt2(c).read_bytes()[:2000])),
            ("cut.pt2: not a readable torch.export program",),
            process=True,
        ),
    ),
    (
        "model/pt2-random-bytes",
        lambda c: Call(
            c.run("--model", c.write("noise.pt2", random_bytes(4096, 4))),
            ("noise.pt2: not a readable torch.export program",),
            process=True,
        ),
    ),
    (
        "model/state-dict-missing-keys",
        lambda c: Call(
            c.run(
                "--model",
                "seed-cnn",
                "--weights",
                _state_dict(c, "missing.pt", lambda s: [s.pop(k) for k in list(s)[-2:]]),
            ),
            ("does not match the model", "missing keys:"),
        ),
    ),
    (
        "model/state-dict-unexpected-keys",
        lambda c: Call(
            c.run(
                "--model",
                "seed-cnn",
                "--weights",
                _state_dict(c, "extra.pt", lambda s: s.update({"head.weight": torch.zeros(3)})),
            ),
            ("does not match the model", "unexpected keys: head.weight"),
        ),
    ),
    (
        "model/state-dict-wrong-shapes",
        lambda c: Call(
            c.run(
                "--model",
                "seed-cnn",
                "--weights",
                _state_dict(
                    c,
                    "shape.pt",
                    lambda s: s.update(
                        {k: torch.zeros(2, *v.shape[1:]) for k, v in list(s.items())[:1]}
                    ),
                ),
            ),
            ("does not match the model", "wrong shapes:", "vs model"),
        ),
    ),
    ("model/weights-pickle-with-code", _pickle_with_code),
    (
        "model/factory-raises",
        lambda c: Call(
            c.run("--model", f"{c.write('nets.py', NETS)}:Raises"),
            ("model factory", "raised RuntimeError: the factory is broken"),
        ),
    ),
    (
        "model/factory-returns-non-module",
        lambda c: Call(
            c.run("--model", f"{c.write('nets.py', NETS)}:not_a_module"),
            ("returned dict, not a torch.nn.Module",),
        ),
    ),
    ("model/onnx-unsupported-ops(run,tflite)", _unsupported_ops),
    ("model/onnx-dynamic-spatial-dims-pinned(ok)", _dynamic_spatial),
    ("model/onnx-missing-external-data", _missing_external_data),
    (
        "model/output-4d-map",
        lambda c: Call(
            c.run("--model", f"{c.write('nets.py', NETS)}:FeatureMap"),
            ("output has shape [1, 10, 8, 8]", "expected class logits"),
        ),
    ),
    (
        "model/output-tuple-first-tensor(ok)",
        lambda c: Call(
            c.run(
                "--model", f"{c.write('nets.py', NETS)}:Pair", "--set", "compress.prune.sparsity=0"
            ),
            (),
            ok=True,
        ),
    ),
    # --- data side
    (
        "data/empty-dataset",
        lambda c: Call(
            c.run(
                "--model",
                "seed-cnn",
                "--data",
                f"npz:{npz(c, 'empty.npz', np.zeros((0, 8, 8, 1), np.uint8), np.zeros(0))}",
            ),
            ("empty.npz: the data set is empty",),
        ),
    ),
    (
        "data/wrong-image-size",
        lambda c: Call(
            c.seeded("--eval-data", f"npz:{npz(c, 'big.npz', *digits_like(20, 16, 16))}"),
            ("the model does not accept 1x16x16 images", "big.npz"),
        ),
    ),
    (
        "data/wrong-channel-count",
        lambda c: Call(
            c.seeded("--eval-data", f"npz:{npz(c, 'rgb.npz', *digits_like(20, c=3))}"),
            ("rgb.npz", "3x8x8"),
        ),
    ),
    (
        "data/labels-out-of-range",
        lambda c: Call(
            c.seeded("--eval-data", f"npz:{npz(c, 'lab.npz', *digits_like(20, classes=13))}"),
            ("lab.npz: label 12 is outside the model's 10 classes",),
        ),
    ),
    (
        "data/negative-label",
        lambda c: Call(
            c.seeded(
                "--eval-data", f"npz:{npz(c, 'neg.npz', digits_like(20)[0], np.arange(20) - 1)}"
            ),
            ("neg.npz: negative label -1",),
        ),
    ),
    ("data/corrupt-image-in-folder", _imagefolder_corrupt),
    ("data/cifar10-batch-wrong-length", _cifar_wrong_length),
    ("data/nan-inf-in-npz", _nan_npz),
    ("data/fewer-images-than-calibration(succeeds)", _few_calibration_images),
    # --- recipe side
    (
        "recipe/unknown-key",
        lambda c: Call(c.seeded("--set", "runtime.thread=2"), ("unknown key 'thread'",)),
    ),
    (
        "recipe/wrong-type",
        lambda c: Call(c.seeded("--set", 'runtime.threads="two"'), ("runtime.threads",)),
    ),
    (
        "recipe/sparsity-out-of-range",
        lambda c: Call(c.seeded("--sparsity", "1.2"), ("compress.prune.sparsity", "1.2")),
    ),
    (
        "recipe/threads-zero",
        lambda c: Call(c.seeded("--set", "runtime.threads=0"), ("runtime.threads", "0")),
    ),
    (
        "recipe/unknown-target",
        lambda c: Call(c.seeded("--target", "mars"), ("unknown target 'mars'",)),
    ),
    ("recipe/extends-cycle", _extends_cycle),
    # --- target side
    (
        "target/qemu-user-missing",
        lambda c: Call(
            c.seeded("--target", "rpi4-qemu"),
            ("qemu-aarch64 not found", "qemu-user"),
            env={"PATH": str(c.tmp)},
        ),
    ),
    (
        "target/sysroot-missing",
        lambda c: Call(
            c.seeded("--target", "rpi4-qemu"),
            ("not built", "edgepack target setup arm64"),
            env={"EDGEPACK_CACHE": str(c.tmp / "empty-cache")},
            skip=_need_qemu(),
        ),
    ),
    ("target/sysroot-corrupted", _broken_sysroot),
    ("target/ssh-unreachable", _ssh_closed_port),
    (
        "target/ssh-host-key-changed",
        lambda c: Call(_ssh(c, config="bad"), ("host key has CHANGED", "ssh-keygen -R")),
    ),
    ("target/ssh-auth-refused", _ssh_auth_refused),
    (
        "target/ssh-device-without-python",
        lambda c: Call(
            _ssh(c, extra=("--set", 'device.python="/opt/none/bin/python3"')),
            ("'/opt/none/bin/python3' not found on the device",),
        ),
    ),
    ("target/ssh-device-without-runtime", _ssh_no_runtime),
    ("target/ssh-run-hangs", _ssh_hangs),
]


@pytest.mark.parametrize("builder", [b for _, b in CASES], ids=[i for i, _ in CASES])
def test_bad_input(builder, tmp_path, request, monkeypatch):
    check_case(builder, tmp_path, request, monkeypatch)


def test_catalogue_matches_its_documentation():
    """Each case is listed once, and docs/robustness.md counts the cases of each side (and in
    all) as the suite runs them: the table rows plus the target tests of their own below."""
    ids = []
    for path in sorted(Path(__file__).parent.glob("test_*.py")):
        module = importlib.import_module(f"tests.robustness.{path.stem}")
        ids += [i for i, _ in getattr(module, "CASES", [])]
    assert len(ids) == len(set(ids))
    per_side = Counter(i.split("/", 1)[0] for i in ids)
    # disk full under run and under train, Ctrl-C: target cases that need a test of their own
    per_side["target"] += len(
        [n for n in globals() if n.startswith(("test_disk_full_", "test_ctrl_c_"))]
    )
    doc = (ROOT / "docs" / "robustness.md").read_text()
    documented = {side: int(n) for side, n in re.findall(r"^\| (\w+) \((\d+)\) \|", doc, re.M)}
    assert documented == dict(per_side)
    total = sum(per_side.values())
    assert f"## Bad inputs: {total} cases, {total} pass" in doc


# --------------------------------------------------------------------- disk full and Ctrl-C


@pytest.fixture
def tiny_disk(tmp_path):
    """A 200 KiB tmpfs (root only); None where mounting is not allowed here."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mnt)],
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        yield None
        return
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_disk_full_on_output(tiny_disk, tmp_path, seed_weights, monkeypatch):
    """ENOSPC while writing --out: one line, nothing left on the (full) disk.

    A real 200 KiB tmpfs where mounting is allowed (the run's artifacts need ~350 KB); else
    ENOSPC is simulated by making the ONNX save fail as a full disk would.
    """
    if tiny_disk is None:

        def full(*_a, **_k):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr("exporter.onnx.export.onnx.save_model", full)
        parent = tmp_path
    else:
        parent = tiny_disk
    out = parent / "out"
    res = invoke(
        "run",
        "--model",
        "seed-cnn",
        "--weights",
        seed_weights,
        "--out",
        out,
        "-q",
        *FAST,
        *FP32_ONLY,
    )
    assert_one_line_error(res, "no space left on device", str(out))
    assert list(parent.iterdir()) == [], "the full disk kept a partial output"


def test_disk_full_on_train_output(tiny_disk, tmp_path, monkeypatch):
    """The same for `edgepack train` (torch.save's own writer raised a RuntimeError there)."""
    if tiny_disk is None:

        def full(*_a, **_k):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(Path, "write_bytes", full)
        parent = tmp_path
    else:
        # Filled up to the last 4 KiB: the ~110 KB state_dict cannot fit.
        (tiny_disk / "filler").write_bytes(bytes(196 * 1024))
        parent = tiny_disk
    res = invoke(
        "train",
        "--model",
        "seed-cnn",
        "--data",
        "digits",
        "--epochs",
        "1",
        "-q",
        "--out",
        parent / "seed.pt",
    )
    assert_one_line_error(res, "no space left on device", "seed.pt")
    assert sorted(p.name for p in parent.iterdir()) == ([] if tiny_disk is None else ["filler"])


def test_ctrl_c_during_finetuning(tmp_path, seed_weights):
    """SIGINT to a real `edgepack run` while it fine-tunes: exit 130, one line, nothing left."""
    out = tmp_path / "out"
    cmd = [
        str(EDGEPACK),
        "run",
        "--model",
        "seed-cnn",
        "--weights",
        str(seed_weights),
        "--out",
        str(out),
        "-q",
        *FAST,
        *FP32_ONLY,
        # Long enough to be interrupted mid-way: many small fine-tuning epochs.
        "--set",
        "compress.finetune.epochs=200",
        "--set",
        "compress.finetune.batch_size=8",
    ]
    # A process started with SIGINT ignored (nohup, a background job of a script, some CI
    # launchers) passes that on, and Python then installs no KeyboardInterrupt handler: the
    # child gets the default disposition back, as an interactive shell would give it.
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    # Wait until the run has built its temp output directory: it is then inside the pipeline.
    deadline = time.monotonic() + 60
    while not [
        p for p in tmp_path.iterdir() if p.name.startswith(".out.") and p.name.endswith(".tmp")
    ]:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never started"
        time.sleep(0.05)
    time.sleep(1.0)  # now fine-tuning (200 epochs take minutes)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    lines = [ln for ln in stderr.decode().splitlines() if ln.strip()]
    assert proc.returncode == 130, stderr.decode()
    assert lines == ["error: interrupted; no partial output was left"], stderr.decode()
    assert list(tmp_path.iterdir()) == [], "a partial output or temp dir was left"
    # The next run with the same --out starts clean (no --force needed: nothing is there).
    res = invoke(
        "run",
        "--model",
        "seed-cnn",
        "--weights",
        seed_weights,
        "--out",
        out,
        "-q",
        *FAST,
        *FP32_ONLY,
    )
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
