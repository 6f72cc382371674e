"""Bad-input cases of the data and recipe side (issue #14): pixel types, class names, numbers.

Each case is a catalogue case (tests/robustness/harness.py). The two cases that must succeed
(an eval folder missing a class, remapped by name; a folder named like a target) check what was
run, not only that something ran.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import invoke, load_npz
from tests.robustness.harness import Call, Ctx, check_case, digits_like, npz
from tests.robustness.options import FP32_ONLY

DIGITS = tuple(str(i) for i in range(10))


def _folder(ctx: Ctx, name: str, classes=DIGITS, per_class: int = 3, mode: str = "L") -> Path:
    """An imagefolder of 8x8 images, ``per_class`` per class subfolder."""
    root = ctx.tmp / name
    images, _ = digits_like(len(classes) * per_class, c=3 if mode == "RGB" else 1)
    for i, cls in enumerate(classes):
        (root / cls).mkdir(parents=True)
        for j in range(per_class):
            arr = images[i * per_class + j]
            Image.fromarray(arr if mode == "RGB" else arr[..., 0], mode).save(
                root / cls / f"{j}.png"
            )
    return root


def _weights_copy(ctx: Ctx, edit) -> Path:
    """The trained seed weights with an edited copy of their training record."""
    dest = ctx.tmp / "w" / "seed.pt"
    dest.parent.mkdir()
    shutil.copy(ctx.weights, dest)
    record = json.loads(Path(str(ctx.weights) + ".json").read_text())
    edit(record)
    Path(str(dest) + ".json").write_text(json.dumps(record))
    return dest


# ------------------------------------------------------------------------------ data side


def _float_01_npz(c: Ctx) -> Call:
    images, labels = digits_like(40)
    path = npz(c, "f01.npz", (images / 255.0).astype(np.float32), labels)
    return Call(c.seeded("--eval-data", f"npz:{path}"), ("f01.npz", "float32 in [0", "0..255"))


def _fractional_npz(c: Ctx) -> Call:
    images, labels = digits_like(40)
    path = npz(c, "frac.npz", np.minimum(images, 200).astype(np.float64) + 0.5, labels)
    return Call(c.seeded("--eval-data", f"npz:{path}"), ("frac.npz", "float64", "whole"))


def _png16(c: Ctx) -> Call:
    root = _folder(c, "p16")
    deep = np.full((8, 8), 40000, np.uint16)
    Image.fromarray(deep).save(root / "3" / "deep.png")
    return Call(
        c.seeded("--eval-data", f"imagefolder:{root}"), ("deep.png", "16-bit", "8-bit images")
    )


def _transparent(c: Ctx) -> Call:
    root = _folder(c, "alpha")
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 3] = 128
    Image.fromarray(rgba, "RGBA").save(root / "4" / "ghost.png")
    return Call(
        c.seeded("--eval-data", f"imagefolder:{root}"), ("ghost.png", "transparent", "RGBA")
    )


def _gray_then_color(c: Ctx) -> Call:
    # 0/ holds grayscale files, the other classes colour ones: the folder is colour (the gray
    # images replicated), so a 1-channel model must refuse it instead of seeing grayed colours.
    root = _folder(c, "mixed", mode="RGB")
    shutil.rmtree(root / "0")
    (root / "0").mkdir()
    for j in range(3):
        Image.fromarray(np.full((8, 8), 30 * j, np.uint8), "L").save(root / "0" / f"{j}.png")
    return Call(
        c.seeded("--eval-data", f"imagefolder:{root}"),
        ("does not accept 3x8x8 images", "mixed"),
    )


def _string_labels_not_in_classes(c: Ctx) -> Call:
    images, _ = digits_like(20)
    path = c.tmp / "str.npz"
    labels = np.array(["cat", "dog", "emu", "dog"] * 5)
    np.savez(path, images=images, labels=labels, classes=np.array(["cat", "dog"]))
    return Call(
        c.seeded("--eval-data", f"npz:{path}"), ("str.npz", "label 'emu'", "classes [cat, dog]")
    )


def _eval_unknown_class(c: Ctx) -> Call:
    train = _folder(c, "train", classes=("a", "b", "c"))
    evald = _folder(c, "eval", classes=("a", "d"))
    return Call(
        c.run(
            "--model",
            "seed-cnn",
            "--data",
            f"imagefolder:{train}",
            "--eval-data",
            f"imagefolder:{evald}",
        ),
        ("eval data has classes [a, d]", "training data [a, b, c]", "d is not"),
    )


def _eval_missing_class(c: Ctx) -> Call:
    """Eval images of a and c only: their labels must be a=0, c=2 as in the training data."""
    train = _folder(c, "train", classes=("a", "b", "c"), per_class=8)
    evald = _folder(c, "eval", classes=("a", "c"), per_class=4)

    def after(res):
        batch = load_npz(c.out / "eval_batch.npz")
        assert sorted(batch["labels"].tolist()) == [0] * 4 + [2] * 4, batch["labels"]
        report = json.loads((c.out / "report.json").read_text())
        note = report["data"]["eval_note"]
        assert "matched to the training classes by name" in note, note
        assert "no eval images of class b" in note, note

    return Call(
        c.run(
            "--model",
            "seed-cnn",
            "--data",
            f"imagefolder:{train}",
            "--eval-data",
            f"imagefolder:{evald}",
            "--set",
            "compress.prune.sparsity=0.0",
            *FP32_ONLY,
        ),
        (),
        ok=True,
        after=after,
    )


def _option_case(option: str, value: str, *frags: str):
    other = "--std" if option == "--mean" else "--mean"
    return lambda c: Call(c.seeded(option, value, other, "0.5"), frags)


# ------------------------------------------------------------------------------ model side

TEN_OUT = textwrap.dedent("""
    from torch import nn

    class TenOut(nn.Module):  # always 10 class scores, whatever the data
        def __init__(self, in_channels=1):
            super().__init__()
            self.conv = nn.Conv2d(in_channels, 4, 3, padding=1)
            self.fc = nn.Linear(4, 10)
        def forward(self, x):
            return self.fc(self.conv(x).mean((2, 3)))
""")


def _output_width(c: Ctx) -> Call:
    root = _folder(c, "three", classes=("a", "b", "c"))
    return Call(
        c.run("--model", f"{c.write('nets.py', TEN_OUT)}:TenOut", "--data", f"imagefolder:{root}"),
        ("10 class scores", "3 classes [a, b, c]"),
    )


def _sidecar_classes(c: Ctx) -> Call:
    root = _folder(c, "letters", classes=tuple("abcdefghij"))
    return Call(
        c.seeded("--data", f"imagefolder:{root}"),
        ("seed.pt.json", "trained on classes [0, 1,", "--data has [a, b,"),
    )


def _sidecar_norm(key: str, value, *frags: str):
    def build(c: Ctx) -> Call:
        w = _weights_copy(c, lambda r: r.update({key: value}))
        return Call(c.run("--model", "seed-cnn", "--weights", w), ("seed.pt.json", *frags))

    return build


# ------------------------------------------------------------------------------ recipe side


def _nan_in_file(c: Ctx) -> Call:
    path = c.write("nanhold.toml", 'extends = "x86_64"\n[eval]\nholdout = nan\n')
    return Call(c.seeded("--target", path), ("nanhold.toml:eval.holdout", "nan", "finite"))


def _set_typo(c: Ctx) -> Call:
    def after(res):
        assert "targets/" not in res.output, "a --set typo is blamed on the built-in recipe"

    return Call(
        c.seeded("--set", "compres.prune.sparsity=0.5"),
        ("--set compres", "unknown key 'compres'"),
        after=after,
    )


CASES = [
    ("data/npz-float-images-in-0-1", _float_01_npz),
    ("data/npz-fractional-float-images", _fractional_npz),
    ("data/png-16-bit-in-folder", _png16),
    ("data/png-transparent-in-folder", _transparent),
    ("data/folder-gray-first-then-colour", _gray_then_color),
    ("data/npz-string-label-not-in-classes", _string_labels_not_in_classes),
    ("data/eval-folder-unknown-class", _eval_unknown_class),
    ("data/eval-folder-missing-class(succeeds,remapped)", _eval_missing_class),
    ("data/mean-nan", _option_case("--mean", "nan", "--mean", "nan", "finite")),
    ("data/std-inf", _option_case("--std", "inf", "--std", "inf", "finite")),
    ("data/std-zero", _option_case("--std", "0", "--std", "> 0")),
    ("model/output-width-vs-class-names", _output_width),
    ("model/sidecar-classes-differ", _sidecar_classes),
    ("model/sidecar-two-of-three-means", _sidecar_norm("mean", [0.1, 0.2], "mean", "2 values")),
    ("model/sidecar-nan-std", _sidecar_norm("std", [float("nan")], "std", "finite")),
    (
        "recipe/set-nan-sparsity",
        lambda c: Call(
            c.seeded("--set", "compress.prune.sparsity=nan"),
            ("--set compress.prune.sparsity", "nan", "finite"),
        ),
    ),
    (
        "recipe/sparsity-option-nan",
        lambda c: Call(c.seeded("--sparsity", "nan"), ("--sparsity", "nan", "finite")),
    ),
    (
        "recipe/set-inf-budget",
        lambda c: Call(
            c.seeded("--set", "budgets.max_latency_p90_ms=inf"),
            ("--set budgets.max_latency_p90_ms", "inf", "finite"),
        ),
    ),
    ("recipe/nan-holdout-in-file", _nan_in_file),
    ("recipe/set-typo-names-set", _set_typo),
]


@pytest.mark.parametrize("builder", [b for _, b in CASES], ids=[i for i, _ in CASES])
def test_case(builder, tmp_path, request, monkeypatch):
    check_case(builder, tmp_path, request, monkeypatch)


def test_folder_named_like_a_target_does_not_shadow_it(tmp_path, monkeypatch):
    """`./x86_64/` in the working directory: `--target x86_64` is still the built-in target."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x86_64").mkdir()
    (tmp_path / "x86_64.toml").mkdir()  # neither the bare name nor a .toml-looking folder
    res = invoke("targets", "x86_64")
    assert res.exit_code == 0, res.output
    assert "targets/x86_64.toml" in res.output.replace("\\", "/")


def test_a_recipe_path_is_a_path(tmp_path, monkeypatch):
    """A name with a separator or ending in .toml is a file, even when a built-in has its stem;
    a missing file is named as a file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").write_text('extends = "x86_64"\n[runtime]\nthreads = 3\n')
    res = invoke("targets", "./mine")
    assert res.exit_code == 0 and "threads = 3" in res.output.replace('"', ""), res.output
    res = invoke("targets", "x86_64.toml")
    assert res.exit_code == 2 and "recipe file x86_64.toml not found" in res.output, res.output
    res = invoke("targets", "mine")  # a bare word is a target name, never a file
    assert res.exit_code == 2 and "unknown target 'mine'" in res.output, res.output
