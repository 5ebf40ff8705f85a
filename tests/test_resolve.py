"""genctl.resolve: the one module that turns a run id, a file, a registered model or a step into
a checkpoint and a model, for the trainer, sampling, evaluation and the registry."""

from __future__ import annotations

import ast

import pytest

from genctl.errors import BadInput
from genctl.resolve import find_checkpoint, load_resume_recipe
from tests.conftest import REPO


def _imports(module: str) -> set[str]:
    tree = ast.parse((REPO / "genctl" / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_resolve_imports_neither_the_trainer_nor_sampling():
    assert not {"genctl.trainer", "genctl.sampling"} & _imports("resolve")


def test_sampling_no_longer_imports_the_trainer():
    # trainer -> sampling (grids) and sampling -> trainer (checkpoints) made a circle
    assert "genctl.trainer" not in _imports("sampling")


def test_a_model_reference_that_is_not_models_uri_is_bad_input():
    with pytest.raises(BadInput, match="models:/NAME@ALIAS"):
        find_checkpoint(model="champion")


@pytest.mark.parametrize("where", [{"path": "x.pt"}, {"model": "models:/m@champion"}])
def test_step_with_a_file_or_a_registered_model_is_bad_input(where):
    with pytest.raises(BadInput, match="--step picks one of a run's kept checkpoints"):
        find_checkpoint(step=10, **where)


def test_resuming_a_registered_model_is_bad_input():
    with pytest.raises(BadInput, match="keeps no training state"):
        load_resume_recipe("models:/m@champion", [])
