"""Bad inputs of `edgepack tune`: an unknown objective, a search-space key that does not exist,
a storage that cannot be reached, a study that tunes another model, an objective the target
cannot measure, a knob a microcontroller cannot vary, a worker without a study.

Harness cases in ``CASES`` (side ``tune``): one line, exit 2, nothing written (no --out, no
study, no temp directory).
"""

from __future__ import annotations

from collections.abc import Callable

import optuna
import pytest

from exporter.recipe import load_recipe
from exporter.tuning import TuneOptions, _config
from exporter.tuning.space import describe
from exporter.tuning.study import CONFIG_ATTR
from tests.helpers import free_port
from tests.robustness.harness import Call, Ctx, check_case


def _tune(ctx: Ctx, *args) -> list:
    return [
        "tune", "--model", "seed-cnn", "--weights", ctx.weights, "--data", "digits",
        "--trials", "1", "--out", ctx.tmp / "study", "-q", *args,
    ]  # fmt: skip


def _unknown_objective(ctx: Ctx) -> Call:
    return Call(_tune(ctx, "--objective", "speed"), ("--objective 'speed'", "size, latency"))


def _unknown_space_key(ctx: Ctx) -> Call:
    return Call(
        _tune(ctx, "--set", 'tune.params=["compress.prune.rate"]'),
        ("--set tune.params", "'compress.prune.rate' is not one of", "compress.prune.sparsity"),
    )


def _unreachable_storage(ctx: Ctx) -> Call:
    url = f"postgresql://tuner:secret@127.0.0.1:{free_port()}/edgepack"
    return Call(
        _tune(ctx, "--storage", url, "--study", "s"),
        ("--storage postgresql://tuner:***@127.0.0.1", "cannot be reached"),
        after=lambda res: _no_password(res.output),
    )


def _no_password(output: str) -> None:
    assert "secret" not in output


def _study_of_another_model(ctx: Ctx) -> Call:
    url = f"sqlite:///{ctx.tmp / 'shared.db'}"
    study = optuna.create_study(
        study_name="seed-x86", storage=url, directions=["maximize", "minimize"]
    )
    study.set_user_attr(CONFIG_ATTR, {"model": "resnet8", "objective": "size"})
    return Call(
        _tune(ctx, "--storage", url, "--study", "seed-x86"),
        ("study 'seed-x86'", "another setup", "--model 'resnet8'", "pick another --study"),
    )


def _study_with_another_search_space(ctx: Ctx) -> Call:
    """The same setup joined with another [tune] section: Optuna cannot mix two distributions
    of one knob (a linear and a log-scale draw of the epochs), so it is refused up front."""
    url = f"sqlite:///{ctx.tmp / 'shared.db'}"
    sets = ("--set", "tune.epochs=[1, 3]")
    opts = TuneOptions(model="seed-cnn", weights=str(ctx.weights), overrides=(sets[1],))
    config = {**_config(opts), "search_space": describe(load_recipe("x86_64").tune, "size")}
    study = optuna.create_study(
        study_name="seed-x86", storage=url, directions=["maximize", "minimize"]
    )
    study.set_user_attr(CONFIG_ATTR, config)
    return Call(
        _tune(ctx, "--storage", url, "--study", "seed-x86", *sets),
        (
            "tunes another setup",
            "the search space",
            '"compress.finetune.epochs": [1, 20, "log"]',
            '"compress.finetune.epochs": [1, 3, "log"]',
            "pick another --study",
        ),
    )


def _instructions_on_a_cpu_target(ctx: Ctx) -> Call:
    return Call(
        _tune(ctx, "--objective", "instructions"),
        ("--objective instructions needs a qemu target", "x86_64 is a local target"),
    )


def _precision_knob_on_a_microcontroller(ctx: Ctx) -> Call:
    return Call(
        _tune(ctx, "--target", "nano33ble", "--set", 'tune.params=["precision"]'),
        ("tune.params: precision cannot vary on nano33ble", "dense full-int8"),
    )


def _worker_without_study(ctx: Ctx) -> Call:
    return Call(["tune", "--worker", "-q"], ("--worker needs --storage and --study",))


CASES: list[tuple[str, Callable[[Ctx], Call]]] = [
    ("tune/unknown-objective", _unknown_objective),
    ("tune/search-space-key-that-does-not-exist", _unknown_space_key),
    ("tune/storage-unreachable", _unreachable_storage),
    ("tune/study-of-another-model", _study_of_another_model),
    ("tune/study-with-another-search-space", _study_with_another_search_space),
    ("tune/instructions-on-a-cpu-target", _instructions_on_a_cpu_target),
    ("tune/precision-knob-on-a-microcontroller", _precision_knob_on_a_microcontroller),
    ("tune/worker-without-a-study", _worker_without_study),
]


@pytest.mark.parametrize("builder", [b for _, b in CASES], ids=[i for i, _ in CASES])
def test_case(builder, tmp_path, request, monkeypatch):
    check_case(builder, tmp_path, request, monkeypatch)
