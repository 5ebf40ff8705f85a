"""docs/plugins.md cannot drift from the code: every hook is documented with its parameters,
the guide documents no hook that does not exist, and its example plugin keeps the contract."""

from __future__ import annotations

import importlib.util
import inspect
import re
import sys
from pathlib import Path

import pytest
import yaml

from genctl import hookspecs, testing

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "plugins.md"
HOOK_HEADING = re.compile(r"^### `(genctl_\w+)\((.*)\)`\s*$", re.MULTILINE)


def _hookspecs() -> dict[str, list[str]]:
    """Hook name -> parameter names, for every function marked ``@hookspec``."""
    return {
        name: list(inspect.signature(fn).parameters)
        for name, fn in vars(hookspecs).items()
        if callable(fn) and hasattr(fn, "genctl_spec")
    }


def _sections() -> dict[str, tuple[str, str]]:
    """Documented hook name -> (its parameters as written in the heading, its section's text)."""
    text = GUIDE.read_text()
    found = {}
    for match in HOOK_HEADING.finditer(text):
        end = text.find("\n#", match.end())
        found[match.group(1)] = (match.group(2), text[match.end() : end if end != -1 else None])
    return found


def _example(marker: str) -> str:
    """The fenced code block that follows ``<!-- example: marker -->`` in the guide."""
    text = GUIDE.read_text()
    match = re.search(rf"<!-- example: {re.escape(marker)} -->\s*```\w*\n(.*?)\n```", text, re.S)
    assert match, f"no example {marker!r} in {GUIDE}"
    return match.group(1)


def test_hookspecs_are_found():
    assert "genctl_register_models" in _hookspecs()


@pytest.mark.parametrize("hook", sorted(_hookspecs()))
def test_hook_is_documented_with_its_parameters(hook):
    sections = _sections()
    params = _hookspecs()[hook]
    assert hook in sections, f"{hook} has no '### `{hook}({', '.join(params)})`' section in {GUIDE}"
    written, body = sections[hook]
    assert [p.strip() for p in written.split(",") if p.strip()] == params
    for param in params:
        assert f"`{param}`" in body, f"parameter {param!r} of {hook} is not described"


def test_guide_documents_no_hook_that_does_not_exist():
    assert set(_sections()) <= set(_hookspecs())


def test_guide_example_plugin_keeps_the_contract(tmp_path, monkeypatch):
    source = tmp_path / "genctl_tiny_gan.py"
    source.write_text(_example("genctl_tiny_gan.py"))
    spec = importlib.util.spec_from_file_location("genctl_tiny_gan", source)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "genctl_tiny_gan", module)
    spec.loader.exec_module(module)
    recipe = yaml.safe_load(_example("tiny_gan.yaml"))
    testing.check_plugin("tiny_gan", recipe, ["model.hidden=16"], plugin=module)
