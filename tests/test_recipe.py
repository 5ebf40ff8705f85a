"""Recipes: safe loading, overrides, validation messages that name the key, value and what is allowed."""

from __future__ import annotations

import pytest
import yaml

from genctl.errors import BadInput
from genctl.recipe import apply_overrides, flatten, load, load_yaml, validate
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


# ---------------------------------------------------------------- files that are not recipes


def test_binary_recipe_file_is_bad_input(tmp_path):
    p = tmp_path / "model.yaml"
    p.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(BadInput, match="binary file, not a YAML recipe"):
        load(p)


def test_recipe_in_another_encoding_names_the_byte_and_line(tmp_path):
    p = tmp_path / "latin.yaml"
    p.write_bytes("name: x\ndescription: caf\xe9\n".encode("latin-1"))
    with pytest.raises(BadInput, match=r"not UTF-8 text \(byte 0xe9 on line 2\)") as e:
        load(p)
    assert "UTF-8" in e.value.hint


def test_utf8_recipe_with_a_byte_order_mark_loads(tmp_path):
    p = tmp_path / "bom.yaml"
    p.write_bytes("\ufeff".encode() + yaml.safe_dump(RAW).encode())
    assert load_yaml(p) == RAW


def test_recipe_path_that_is_a_folder(tmp_path):
    with pytest.raises(BadInput, match="is a folder, not a file"):
        load(tmp_path)


def _billion_laughs(levels: int = 9) -> str:
    """Nine aliases of nine aliases ...: 9**levels strings from a few hundred bytes."""
    items = ['&a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        items.append(f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "[" + ", ".join(items) + "]"


def test_billion_laughs_is_refused_before_anything_walks_it(tmp_path):
    # the bomb sits where validation prints the bad value: it used to run out of memory
    p = tmp_path / "bomb.yaml"
    p.write_text(
        "name: x\nplugin: toy\ndata: {kind: shapes}\nmodel: {latent: " + _billion_laughs() + "}\n"
    )
    with pytest.raises(BadInput, match="expands to over 100,000 values through its aliases"):
        load_yaml(p)


def test_a_few_aliases_are_fine(tmp_path):
    p = tmp_path / "anchors.yaml"
    p.write_text(
        "name: x\nplugin: toy\ndata: {kind: shapes}\n"
        "train: {optimizer: &opt {lr: 0.001}, optimizers: {g: *opt, d: *opt}}\n"
    )
    assert load_yaml(p)["train"]["optimizers"]["d"] == {"lr": 0.001}


def test_self_referencing_alias_is_bad_input(tmp_path):
    p = tmp_path / "loop.yaml"
    p.write_text("name: x\nplugin: toy\ndata: {kind: shapes}\nmodel: &m {latent: 3, again: *m}\n")
    with pytest.raises(BadInput, match="endless"):
        load_yaml(p)


def test_runaway_nesting_is_bad_input(tmp_path):
    p = tmp_path / "deep.yaml"
    p.write_text("name: " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(BadInput, match="nested too deeply"):
        load(p)


def test_billion_laughs_in_an_override_is_refused():
    with pytest.raises(BadInput, match="override model.latent: the YAML expands"):
        apply_overrides(RAW, ["model.latent=" + _billion_laughs()])


def test_override_of_an_unknown_section_blames_the_override():
    with pytest.raises(BadInput, match=r"override 'trian.steps=5': unknown recipe section") as e:
        apply_overrides(RAW, ["trian.steps=5"])
    assert "did you mean 'train'" in e.value.hint


def test_override_with_an_empty_key_part():
    with pytest.raises(BadInput, match="empty key"):
        apply_overrides(RAW, ["train..steps=5"])
