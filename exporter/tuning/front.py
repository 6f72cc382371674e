"""The front: feasible, non-dominated trials, rebuilt from their recipes and validated on the
eval data once; the chosen one becomes best.toml and best/.

Rebuilding from recipes (seeds are fixed) is what lets workers keep their artifacts to
themselves: only metrics and recipes travel through the study.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import optuna

from exporter.common.atomic import atomic_write_text
from exporter.common.typed_json import from_json
from exporter.pipeline import RunOptions, run
from exporter.recipe import is_recipe_path, parse_override
from exporter.tuning.objective import Prepared, metrics
from exporter.tuning.schema import Figures, FrontMember

FRONT_DIR = "front"
BEST_TOML = "best.toml"
BEST_DIR = "best"


def feasible(trial: optuna.trial.FrozenTrial) -> bool:
    cons = trial.user_attrs.get("constraints")
    return cons is not None and all(c <= 0 for c in cons)


def pareto(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """Feasible COMPLETE trials no other feasible one dominates (accuracy up, objective down),
    best objective first. Infeasible trials never enter, whatever their figures."""
    pool = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and feasible(t)]

    def dominates(a, b) -> bool:
        (acc_a, obj_a), (acc_b, obj_b) = a.values, b.values
        return acc_a >= acc_b and obj_a <= obj_b and (acc_a > acc_b or obj_a < obj_b)

    front = [t for t in pool if not any(dominates(o, t) for o in pool if o is not t)]
    # Equal figures from the same recipe drawn twice: one is enough.
    unique: dict[tuple, optuna.trial.FrozenTrial] = {}
    for t in sorted(front, key=lambda t: (t.values[1], -t.values[0], t.number)):
        unique.setdefault(tuple(t.values), t)
    return list(unique.values())


def _toml_value(value: object) -> str:
    # JSON's strings, numbers, booleans and arrays of them are TOML as they are.
    return json.dumps(value)


def recipe_toml(target: str, overrides: list[str], header: str) -> str:
    """A recipe file that `extends` the target and sets the trial's keys."""
    parent = str(Path(target).resolve()) if is_recipe_path(target) else target
    sections: dict[str, dict[str, object]] = {}
    for text in overrides:
        parts, value = parse_override(text)
        if parts[0] == "tune":  # how the search ran, not what the artifact is
            continue
        sections.setdefault(".".join(parts[:-1]), {})[parts[-1]] = value
    lines = [f"# {line}" for line in header.splitlines()]
    lines.append(f"extends = {_toml_value(parent)}")
    for section, keys in sections.items():
        lines.append(f"\n[{section}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in keys.items())
    return "\n".join(lines) + "\n"


def figures_of(report: dict, artifact: str, objective: str) -> Figures | None:
    row = next((r for r in report["artifacts"] if r["path"] == artifact), None)
    if row is None or row.get("status") != "ok":
        return None
    return from_json(Figures, metrics(row, objective), "figures")


def validate_front(
    front: list[optuna.trial.FrozenTrial], config: dict, prep: Prepared, out: Path, study: str
) -> list[FrontMember]:
    """Rebuild each front trial from its recipe (same training images and seeds: the same
    artifacts) and validate it on the eval images the search never saw: the only time they
    are used. The recipes stay in front/; the rebuilt artifacts do not."""
    members = []
    (out / FRONT_DIR).mkdir(exist_ok=True)
    for t in front:
        name = f"trial-{t.number:04d}"
        recipe = out / FRONT_DIR / f"{name}.toml"
        header = (
            f"edgepack tune: trial {t.number} of study '{study}' (objective "
            f"{config['objective']})\nreproduce: edgepack run --target {recipe.name} with the "
            "study's --model/--weights/--data"
        )
        atomic_write_text(recipe, recipe_toml(config["target"], t.user_attrs["overrides"], header))
        with tempfile.TemporaryDirectory(prefix="edgepack-front-") as tmp:
            result = run(
                RunOptions(
                    model=config["model"],
                    out=Path(tmp) / name,
                    weights=config["weights"],
                    data=f"npz:{prep.train_npz}",
                    eval_data=f"npz:{prep.final_npz}",
                    target=str(recipe),
                    mean=prep.mean,
                    std=prep.std,
                    force=True,
                    quiet=True,
                )
            )
        artifact = t.user_attrs["metrics"]["artifact"]
        rows = {r["path"]: r for r in result.report["artifacts"]}
        row = rows.get(artifact, {})
        fig = figures_of(result.report, artifact, config["objective"])
        members.append(
            FrontMember(
                trial=t.number,
                recipe=str(recipe.relative_to(out)),
                tuning=from_json(Figures, t.user_attrs["metrics"], "tuning"),
                eval=fig,
                eval_passed=fig is not None
                and all(b["ok"] for b in row.get("budgets", {}).values()),
                fp32_tflite_bytes=rows.get("model.fp32.tflite", {}).get("bytes"),
            )
        )
    return members


def choose(members: list[FrontMember]) -> tuple[FrontMember | None, str]:
    """The member with the best objective among those holding every budget on the eval
    data (ties: higher accuracy)."""
    passed = [m for m in members if m.eval_passed and m.eval is not None]
    if not passed:
        return None, "no front trial holds every budget on the eval data"
    best = min(passed, key=lambda m: (m.eval.objective, -(m.eval.accuracy or 0.0)))
    return best, (
        f"the best objective among the {len(passed)} of {len(members)} front "
        "trials that hold every budget on the eval images the search never saw"
    )


def install_best(out: Path, member: FrontMember, config: dict, quiet: bool) -> dict:
    """best.toml, and best/: exactly what `edgepack run --target best.toml` writes with the
    study's --model/--weights/--data (validated on the usual eval images)."""
    text = (
        (out / member.recipe)
        .read_text()
        .replace(f"--target {Path(member.recipe).name}", f"--target {BEST_TOML}")
    )
    atomic_write_text(out / BEST_TOML, text)
    result = run(
        RunOptions(
            model=config["model"],
            out=out / BEST_DIR,
            weights=config["weights"],
            data=config["data"],
            eval_data=config["eval_data"],
            target=str(out / BEST_TOML),
            mean=tuple(config["mean"]) if config["mean"] else None,
            std=tuple(config["std"]) if config["std"] else None,
            force=True,
            quiet=quiet,
        )
    )
    return result.report
