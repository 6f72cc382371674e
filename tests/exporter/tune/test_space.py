"""The [tune] section and the recipes trials become: ranges checked like every recipe key, each
drawn knob a valid --set, and a front recipe file that loads to the trial's recipe."""

from __future__ import annotations

import dataclasses

import optuna
import pytest

from exporter.errors import RecipeError
from exporter.recipe import load_recipe
from exporter.tuning.front import recipe_toml
from exporter.tuning.space import DEFAULT_KNOBS, fixed_sets, suggest


@pytest.mark.parametrize(
    "override, message",
    [
        ("tune.sparsity=[0.9, 0.5]", "--set tune.sparsity: expected [low, high], got [0.9, 0.5]"),
        ("tune.epochs=[2]", "--set tune.epochs: expected [low, high], got [2]"),
        ("tune.precisions=[]", "--set tune.precisions: needs at least one candidate"),
        ("tune.sparsity=[0.5, 1.0]", "--set tune.sparsity: 1.0 is out of range (must be < 1.0)"),
        ('tune.sampler="cmaes"', "--set tune.sampler: 'cmaes' is not one of tpe, nsga2, random"),
    ],
)
def test_bad_tune_sections_are_refused_with_the_key(override, message):
    with pytest.raises(RecipeError) as err:
        load_recipe("x86_64", [override])
    assert str(err.value) == message


@pytest.mark.parametrize("objective", ["size", "latency"])
def test_every_drawn_trial_is_a_recipe_and_its_file_loads_to_it(objective, tmp_path):
    recipe = load_recipe("x86_64", ['tune.params=["compress.prune.sparsity", '
                                    '"compress.prune.block", "compress.channels.ratio", '
                                    '"compress.finetune.epochs", "compress.finetune.augment", '
                                    '"precision", '
                                    '"quantize.method", "export.storage"]'])  # fmt: skip
    study = optuna.create_study(
        directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=3)
    )
    for _ in range(8):
        trial = study.ask()
        sets = suggest(trial, recipe.tune, objective)
        direct = load_recipe("x86_64", sets)
        path = tmp_path / f"t{trial.number}.toml"
        path.write_text(recipe_toml("x86_64", sets, "a test"))
        from_file = load_recipe(str(path))
        assert dataclasses.replace(from_file, name="x", source="") == dataclasses.replace(
            direct, name="x", source=""
        )
        assert 0.5 <= direct.compress.prune.sparsity <= 0.95
        assert direct.compress.prune.block in ([1, 1], [1, 4], [1, 16])
        assert len(direct.export.precisions) == 1
        assert 1 <= direct.compress.finetune.epochs <= 20
        assert direct.compress.finetune.augment == trial.params["compress.finetune.augment"]
        quantized = direct.export.precisions == ["int8"]
        assert ("quantize.method" in trial.params) == quantized
        study.tell(trial, [90.0, 1000.0])


def test_default_knobs_follow_the_objective():
    spec = load_recipe("x86_64").tune
    trial = optuna.create_study(directions=["maximize", "minimize"]).ask()
    keys = {s.split("=")[0] for s in suggest(trial, spec, "latency")}
    assert keys == {
        "compress.channels.ratio",
        "compress.finetune.epochs",
        "compress.finetune.augment",
    }
    assert "compress.prune.sparsity" in DEFAULT_KNOBS["size"]


def test_latency_trials_turn_off_the_targets_unstructured_pruning_unless_asked():
    recipe = load_recipe("x86_64")
    assert recipe.compress.prune.sparsity == 0.75  # what a latency trial must not inherit
    spec = recipe.tune
    assert fixed_sets(spec, "latency", "local", []) == ["compress.prune.sparsity=0.0"]
    assert (
        load_recipe("x86_64", fixed_sets(spec, "latency", "local", [])).compress.prune.sparsity == 0
    )
    assert fixed_sets(spec, "instructions", "qemu", ["eval.samples=500"]) == [
        "compress.prune.sparsity=0.0"
    ]
    # The user's own choice stands, and the size space draws sparsity itself.
    assert fixed_sets(spec, "latency", "local", ["compress.prune.sparsity=0.5"]) == []
    assert fixed_sets(spec, "size", "local", []) == []
    chosen = load_recipe("x86_64", ['tune.params=["compress.channels.ratio"]']).tune
    assert fixed_sets(chosen, "latency", "local", []) == []
