from pathlib import Path

import pytest

from exporter.docs import GENERATED
from exporter.errors import RecipeError
from exporter.recipe import TARGETS_DIR, available_targets, load_recipe

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", available_targets())
def test_every_builtin_target_loads(name):
    recipe = load_recipe(name)
    assert recipe.name == name
    assert recipe.description, f"{name} needs a one-line description"


def test_x86_64_values():
    r = load_recipe("x86_64")
    assert r.device.kind == "local"
    assert r.compress.prune.sparsity == 0.75
    assert r.budgets.max_accuracy_drop == 1.5


def _write(tmp_path, text, name="r.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_unknown_key_names_file_key_and_allowed(tmp_path):
    p = _write(tmp_path, 'extends = "x86_64"\n[runtime]\nthreds = 2\n')
    with pytest.raises(RecipeError) as err:
        load_recipe(str(p))
    msg = str(err.value)
    assert str(p) in msg and "threds" in msg and "threads" in msg


def test_unknown_section(tmp_path):
    p = _write(tmp_path, "[budget]\nmax_accuracy_drop = 1\n")
    with pytest.raises(RecipeError, match="unknown key 'budget'.*budgets"):
        load_recipe(str(p))


@pytest.mark.parametrize(
    "override, match",
    [
        ("compress.prune.sparsity=1.2", r"sparsity: 1.2 is out of range \(must be < 1.0\)"),
        ("runtime.threads=0", r"threads: 0 is out of range \(must be >= 1\)"),
        ("runtime.threads=1.5", r"threads: expected int, got float"),
        ('runtime.delegate="gpu"', r"'gpu' is not one of xnnpack, none"),
        ('runtime.runtimes=["onnxruntime","tvm"]', r"'tvm' is not one of onnxruntime, litert"),
        ('budgets.max_bytes="big"', r"max_bytes: expected int, got str"),
        ("eval.holdout=1", r"holdout: 1.0 is out of range"),
    ],
)
def test_bad_values_are_named(override, match):
    with pytest.raises(RecipeError, match=match):
        load_recipe("x86_64", [override])


def test_set_override_applies_and_parses_bare_words():
    r = load_recipe(
        "x86_64", ["compress.prune.scope=layer", "runtime.threads=2", 'export.formats=["onnx"]']
    )
    assert r.compress.prune.scope == "layer"
    assert r.runtime.threads == 2
    assert r.export.formats == ["onnx"]


def test_sparsity_and_threshold_exclusive():
    with pytest.raises(RecipeError, match="either sparsity or threshold"):
        load_recipe("x86_64", ["compress.prune.threshold=0.01"])


def test_extends_merges_sections(tmp_path):
    p = _write(tmp_path, 'extends = "x86_64"\ndescription = "mine"\n[runtime]\nthreads = 2\n')
    r = load_recipe(str(p))
    assert r.runtime.threads == 2
    assert r.runtime.runs == load_recipe("x86_64").runtime.runs  # inherited
    assert r.description == "mine" and r.name == "r"


def test_extends_merges_nested_tables_key_by_key(tmp_path):
    """A child that sets one key of [compress.prune] keeps the parent's others; a list it sets
    replaces the parent's list instead of extending it."""
    p = _write(
        tmp_path,
        'extends = "rpi5-qemu"\n[compress.prune]\nsparsity = 0.5\n'
        '[export]\nprecisions = ["int8"]\n',
    )
    r, parent = load_recipe(str(p)), load_recipe("rpi5-qemu")
    assert r.compress.prune.sparsity == 0.5 and parent.compress.prune.sparsity == 0.75
    assert r.compress.prune.schedule == parent.compress.prune.schedule == "gradual"
    assert r.compress.prune.exclude == parent.compress.prune.exclude == ["first_conv", "last_fc"]
    assert r.export.precisions == ["int8"] and r.export.storage == parent.export.storage
    assert r.device == parent.device and r.device.cpu == "cortex-a76"  # two levels of extends


def test_extends_cycle(tmp_path):
    _write(tmp_path, 'extends = "b.toml"\n', "a.toml")
    _write(tmp_path, 'extends = "a.toml"\n', "b.toml")
    with pytest.raises(RecipeError, match="'extends' cycle"):
        load_recipe(str(tmp_path / "a.toml"))


def test_android_gpu_defaults_to_fp16_tflite_on_the_phone_class_cpu():
    gpu, cpu = load_recipe("android-gpu"), load_recipe("android-arm64")
    assert gpu.export.precisions == ["fp16"] and gpu.export.formats == ["tflite"]
    assert gpu.export.storage == ["dense"]
    # Validated where android-arm64 is: the same emulated phone CPU and budgets.
    assert gpu.device == cpu.device and gpu.budgets == cpu.budgets
    assert "android-gpu" in available_targets()


def test_unknown_target_lists_known():
    with pytest.raises(RecipeError, match="unknown target 'pi9'.*x86_64"):
        load_recipe("pi9")


def test_invalid_toml(tmp_path):
    p = _write(tmp_path, "[runtime\nthreads=1")
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(str(p))


def test_targets_dir_is_the_repo_folder():
    assert TARGETS_DIR == ROOT / "targets"


def test_wheel_ships_the_recipes(tmp_path):
    """Installed from a wheel (no source tree beside the package), the recipes are found under
    <prefix>/share/edgepack/targets, where the wheel's data files go."""
    import shutil
    import subprocess
    import sys
    import zipfile

    src = tmp_path / "src"  # a copy, so that the build leaves nothing in the checkout
    for name in ("pyproject.toml", "README.md", "exporter", "runtime_check", "targets"):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy(ROOT / name, src / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("edgepack-*.whl")
    site, prefix = tmp_path / "site", tmp_path / "prefix"
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            data = name.split(".data/data/", 1)
            dest = prefix / data[1] if len(data) == 2 else site / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(z.read(name))
    shipped = sorted(p.name for p in (prefix / "share" / "edgepack" / "targets").glob("*.toml"))
    assert shipped == sorted(p.name for p in (ROOT / "targets").glob("*.toml"))
    code = (
        "import sys; sys.prefix = sys.argv[1]; sys.path.insert(0, sys.argv[2]); "
        "from exporter.recipe import TARGETS_DIR, load_recipe; "
        "print(TARGETS_DIR); print(load_recipe('rpi5-qemu').device.cpu)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(prefix), str(site)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout.split()
    assert out == [str(prefix / "share" / "edgepack" / "targets"), "cortex-a76"]


@pytest.mark.parametrize("rel", sorted(GENERATED))
def test_generated_docs_are_current(rel):
    """docs/recipes.md, report_schema.md, report.schema.json, supported_ops.md: as generated."""
    doc = (ROOT / rel).read_text()
    assert doc == GENERATED[rel](), f"{rel} is stale: run `make docs`"


# ------------------------------------------- non-finite numbers, --set blame, names vs paths (#14)


def _float_keys() -> list[str]:
    from exporter.recipe import describe_fields

    return [key for key, tname, _, _ in describe_fields() if tname == "float"]


def test_every_float_key_is_checked():
    keys = _float_keys()
    assert {"compress.prune.sparsity", "eval.holdout", "budgets.max_accuracy_drop"} <= set(keys)


@pytest.mark.parametrize("key", _float_keys())
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_floats_are_refused_naming_set_and_key(key, value):
    with pytest.raises(RecipeError) as err:
        load_recipe("x86_64", [f"{key}={value}"])
    assert str(err.value) == f"--set {key}: {float(value)!r} is not a finite number"


def test_non_finite_float_in_a_file_names_the_file(tmp_path):
    p = _write(tmp_path, 'extends = "x86_64"\n[budgets]\nmax_accuracy_drop = nan\n')
    with pytest.raises(RecipeError, match=r"r.toml:budgets.max_accuracy_drop: nan is not a finite"):
        load_recipe(str(p))


def test_set_mistakes_name_set_not_the_recipe_file():
    for override, expected in [
        ("compres.prune.sparsity=0.5", "--set compres: unknown key 'compres' (allowed: "),
        ("runtime.thread=2", "--set runtime.thread: unknown key 'thread' (allowed: runtimes"),
        ("runtime.threads=0", "--set runtime.threads: 0 is out of range (must be >= 1)"),
        ("compress=3", "--set compress: expected a [section], got 3"),
        ("compress.prune.threshold=0.01", "--set compress.prune: set either sparsity or thres"),
    ]:
        with pytest.raises(RecipeError) as err:
            load_recipe("x86_64", [override])
        assert str(err.value).startswith(expected), (override, str(err.value))
        assert "x86_64.toml" not in str(err.value)


def test_file_mistakes_still_name_the_file_under_set(tmp_path):
    p = _write(tmp_path, 'extends = "x86_64"\n[runtime]\nthreads = 0\n')
    with pytest.raises(RecipeError, match=r"r.toml:runtime.threads: 0 is out of range"):
        load_recipe(str(p), ["runtime.runs=3"])
    q = _write(tmp_path, 'extends = "rpi4-qemu"\n', "q.toml")
    with pytest.raises(RecipeError, match=r"^--set device.cpu: 'max' is refused"):
        load_recipe(str(q), ["device.cpu=max"])


def test_a_bare_name_is_a_builtin_target_whatever_the_cwd_holds(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x86_64").mkdir()
    (tmp_path / "rpi5").write_text("not toml at all [")
    assert load_recipe("x86_64").source == str(TARGETS_DIR / "x86_64.toml")
    assert load_recipe("rpi5").source == str(TARGETS_DIR / "rpi5.toml")
    with pytest.raises(RecipeError, match=r"unknown target 'mine' .*path ending in .toml"):
        load_recipe("mine")


def test_a_path_is_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    _write(tmp_path / "sub", 'extends = "x86_64"\n[runtime]\nthreads = 3\n', "base")
    # extends by a path without .toml: relative to the file that extends it
    _write(tmp_path / "sub", 'extends = "./base"\n[runtime]\nruns = 7\n', "child.toml")
    r = load_recipe("sub/child.toml")
    assert (r.runtime.threads, r.runtime.runs, r.name) == (3, 7, "child")
    assert load_recipe("./sub/base").runtime.threads == 3
    (tmp_path / "x86_64.toml").mkdir()
    with pytest.raises(RecipeError, match="recipe file x86_64.toml is not a file"):
        load_recipe("x86_64.toml")
    with pytest.raises(RecipeError, match="recipe file nope.toml not found"):
        load_recipe("nope.toml")
