"""The plugin manager: entry points, duplicates, broken plugins isolated."""

from __future__ import annotations

import types

import pytest

import genctl
from genctl.errors import BadInput
from genctl.plugins import load_plugins
from tests import toy


def test_extra_plugin_is_registered_with_its_name():
    ps = load_plugins(extra={"toy": toy})
    assert "toy" in ps.registry
    assert ps.registry.get("toy").plugin == "toy"


def test_duplicate_model_name_is_reported_naming_both_plugins():
    twin = types.ModuleType("twin")

    @genctl.hookimpl
    def genctl_register_models(registry):
        registry.add(toy.SPEC)

    twin.genctl_register_models = genctl_register_models
    ps = load_plugins(extra={"toy": toy, "twin": twin})
    assert "toy" in ps.registry
    [err] = [e for e in ps.errors if e.name == "twin"]
    assert "registered twice" in err.error and "toy" in err.error


def test_plugin_raising_in_its_hook_breaks_no_other():
    broken = types.ModuleType("broken")

    @genctl.hookimpl
    def genctl_register_models(registry):
        raise RuntimeError("boom")

    broken.genctl_register_models = genctl_register_models
    ps = load_plugins(extra={"broken": broken, "toy": toy})
    assert "toy" in ps.registry
    assert [e.error for e in ps.errors if e.name == "broken"] == ["RuntimeError: boom"]


def test_misspelled_hook_is_an_error_not_silence():
    typo = types.ModuleType("typo")

    @genctl.hookimpl
    def genctl_register_model(registry):  # missing "s"
        pass

    typo.genctl_register_model = genctl_register_model
    ps = load_plugins(extra={"typo": typo, "toy": toy})
    assert any(e.name == "typo" for e in ps.errors)
    assert "toy" in ps.registry


def test_unknown_model_suggests_a_close_name():
    ps = load_plugins(extra={"toy": toy})
    with pytest.raises(BadInput, match="did you mean 'toy'"):
        ps.registry.get("tyo")


def test_env_var_restricts_loaded_entry_points(monkeypatch):
    monkeypatch.setenv("GENCTL_PLUGINS", "no-such-plugin")
    ps = load_plugins()
    assert ps.registry.names() == [] and ps.errors == []


def test_every_hookspec_has_a_docstring():
    from genctl import hookspecs

    specs = [getattr(hookspecs, n) for n in dir(hookspecs) if n.startswith("genctl_")]
    assert specs
    for fn in specs:
        assert fn.__doc__ and ":param" in fn.__doc__ and "Since" in fn.__doc__, fn.__name__
