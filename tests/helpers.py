"""Helpers for core tests: the toy plugin made visible to the CLI, recipes written to disk."""

from __future__ import annotations

from pathlib import Path

import yaml

import genctl.plugins
from tests import toy

TOY_RECIPE = {
    "name": "toy-shapes",
    "plugin": "toy",
    "model": {"latent": 4},
    "data": {"kind": "shapes", "image_size": 8, "size": 64},
    "train": {
        "steps": 20,
        "batch_size": 8,
        "log_every": 5,
        "sample_every": 10,
        "checkpoint_every": 5,
        "grid_size": 4,
        "ema": {"networks": ["generator"], "decay": 0.9},
    },
}


def use_toy_plugin(monkeypatch) -> None:
    """Make `toy` an installed plugin for this test (the CLI looks plugins up by name)."""
    ps = genctl.plugins.load_plugins(extra={"toy": toy})
    monkeypatch.setattr(genctl.plugins, "plugins", lambda: ps)


def write_recipe(path: Path, raw: dict | None = None) -> Path:
    path.write_text(yaml.safe_dump(raw or TOY_RECIPE, sort_keys=False))
    return path
