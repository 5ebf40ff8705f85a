"""Recipes: safe loading, overrides, validation messages that name the key, value and what is allowed."""

from __future__ import annotations

import pytest
import yaml

from genctl.errors import BadInput
from genctl.recipe import apply_overrides, flatten, load, validate
from tests import toy

RAW = {
    "name": "toy-shapes",
    "plugin": "toy",
    "model": {"latent": 4},
    "data": {"kind": "shapes", "image_size": 8},
    "train": {"steps": 10, "batch_size": 4},
}


def test_valid_recipe_fills_defaults():
    r = validate(RAW, spec=toy.SPEC)
    assert r.train.steps == 10
    assert r.train.optimizer.lr == pytest.approx(2e-4)
    assert r.model.latent == 4 and r.model.d_steps == 1
    resolved = r.to_dict()
    assert resolved["model"] == {"latent": 4, "d_steps": 1}
    assert resolved["train"]["ema"]["decay"] == pytest.approx(0.999)


def test_misspelled_key_is_named_with_a_suggestion():
    raw = apply_overrides(RAW, ["train.batch_sise=8"])
    with pytest.raises(BadInput) as e:
        validate(raw, "r.yaml", spec=toy.SPEC)
    msg = str(e.value)
    assert "train.batch_sise" in msg and "did you mean 'batch_size'" in msg
    assert "r.yaml" in msg


def test_unknown_model_key_lists_the_plugin_schema():
    with pytest.raises(BadInput) as e:
        validate(apply_overrides(RAW, ["model.laten=3"]), spec=toy.SPEC)
    assert "model.laten" in str(e.value) and "latent" in str(e.value)


def test_wrong_type_names_path_and_value():
    with pytest.raises(BadInput) as e:
        validate(apply_overrides(RAW, ["train.steps=many"]), spec=toy.SPEC)
    assert "train.steps" in str(e.value) and "'many'" in str(e.value)


def test_literal_lists_allowed_values():
    with pytest.raises(BadInput) as e:
        validate(apply_overrides(RAW, ["data.kind=pictures"]), spec=toy.SPEC)
    assert "data.kind" in str(e.value) and "'shapes'" in str(e.value)


def test_overrides_set_nested_values_parsed_as_yaml_and_remove_keys():
    out = apply_overrides(
        RAW, ["train.optimizer.betas=[0.0, 0.99]", "~model.latent", "tracking.experiment=x"]
    )
    assert out["train"]["optimizer"]["betas"] == [0.0, 0.99]
    assert "latent" not in out["model"]
    assert out["tracking"] == {"experiment": "x"}
    assert RAW["model"] == {"latent": 4}  # the input is not modified


def test_removing_a_missing_key_is_bad_input():
    with pytest.raises(BadInput, match="no key"):
        apply_overrides(RAW, ["~train.nothing"])


def test_malformed_yaml_reports_the_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\nplugin: [toy\n")
    with pytest.raises(BadInput) as e:
        load(p)
    assert "malformed YAML" in str(e.value) and "line" in str(e.value)


def test_missing_recipe_file_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="not found"):
        load(tmp_path / "nope.yaml")


def test_yaml_is_loaded_safely(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("name: !!python/object/apply:os.system ['echo hi']\nplugin: toy\n")
    with pytest.raises(BadInput):
        load(p)


def test_resolved_recipe_round_trips_through_yaml():
    r = validate(RAW, spec=toy.SPEC)
    again = validate(yaml.safe_load(r.to_yaml()), spec=toy.SPEC)
    assert again.to_dict() == r.to_dict()


def test_flatten_gives_dotted_keys():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}}) == {
        "a.b": 1,
        "a.c.d": [1, 2],
        "e": {},
    }
