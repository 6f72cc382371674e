"""``edgepack targets [NAME]``: list the recipes, or show one resolved."""

from __future__ import annotations

import json

import click


@click.command("targets")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def command(name, as_json):
    """List target recipes, or show NAME with every key resolved (extends applied)."""
    from exporter.recipe import available_targets, load_recipe

    if name:
        recipe = load_recipe(name)
        data = recipe.to_dict()
        if as_json:
            click.echo(json.dumps(data, indent=2))
            return
        click.echo(f"{recipe.name}: {recipe.description}\n  file: {recipe.source}")
        for section, values in data.items():
            if isinstance(values, dict):
                _echo_section(section, values)
        return
    rows = [(t, load_recipe(t).description) for t in available_targets()]
    if as_json:
        click.echo(json.dumps(dict(rows), indent=2))
        return
    width = max(len(t) for t, _ in rows)
    for t, desc in rows:
        click.echo(f"{t:<{width}}  {desc}")


def _echo_section(prefix: str, values: dict) -> None:
    for key, value in values.items():
        if isinstance(value, dict):
            _echo_section(f"{prefix}.{key}", value)
        else:
            click.echo(f"  {prefix}.{key} = {json.dumps(value)}")
