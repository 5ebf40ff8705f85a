"""Every shipped recipe validates, and opens with a comment saying how to launch it."""

from __future__ import annotations

import pytest

from genctl.recipe import load, recipes_dir

RECIPES = sorted(recipes_dir().glob("*.yaml"))


def test_there_are_recipes():
    assert any(p.stem == "quickstart" for p in RECIPES)


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_validates(path):
    recipe = load(path)
    assert recipe.name and recipe.plugin


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_opens_with_its_launch_command(path):
    head = path.read_text().splitlines()[:6]
    assert head[0].startswith("#")
    assert any(f"genctl train recipes/{path.name}" in line for line in head), head
