"""Every shipped example recipe loads and points at data and a model that exist (no model is loaded)."""
from __future__ import annotations

from pathlib import Path

import pytest

from tunesmith.config import load_recipe
from tunesmith.data.io import resolve_path
from tunesmith.models import catalogue

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*/recipe.yaml"))


def test_examples_are_shipped():
    assert {p.parent.name for p in EXAMPLES} >= {"sentiment", "domain-pretraining"}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.parent.name for p in EXAMPLES])
def test_example_recipe_loads_and_names_existing_inputs(path):
    recipe = load_recipe(path)
    assert recipe.name and recipe.task
    data = recipe.data
    specs = [data.train, data.validation, data.test] + [m.train for m in (data.mix or [])]
    for spec in filter(None, specs):
        assert resolve_path(spec).is_file(), spec         # raises TunesmithError when missing
    models = {row["name"]: row for row in catalogue()}
    name = recipe.model.name
    if name in models:
        assert models[name]["installed"], f"{name}: package {models[name]['package']} not installed"
    else:
        assert Path(name).is_dir(), name
