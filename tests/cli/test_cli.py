"""End-to-end CLI behaviour: train, sample, runs, recipes, plugins — and bad input exits 2."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import Field
from typer.testing import CliRunner

import genctl
import genctl.plugins
from genctl import checkpoint
from genctl.cli import app
from genctl.spec import ModelSpec, Schema, labels_to_draw
from genctl.tracking import get_run, local_path
from tests import toy
from tests.conftest import REPO
from tests.helpers import TOY_RECIPE, use_toy_plugin, write_recipe


@pytest.fixture
def cli(workdir, monkeypatch):
    use_toy_plugin(monkeypatch)
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(app, [str(a) for a in args])

    return invoke


@pytest.fixture
def trained(cli, workdir):
    recipe = write_recipe(workdir / "toy.yaml")
    res = cli("train", recipe, "train.steps=10", "--no-progress")
    assert res.exit_code == 0, res.output
    run_id = res.output.split("run ")[1].split()[0]
    return run_id


def _assert_bad_input(res, *fragments):
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    for f in fragments:
        assert f in res.output, res.output


def test_train_dry_run_prints_the_resolved_recipe(cli, workdir):
    res = cli("train", write_recipe(workdir / "toy.yaml"), "train.batch_size=3", "--dry-run")
    assert res.exit_code == 0, res.output
    assert "batch_size: 3" in res.output and "decay: 0.9" in res.output
    assert not (workdir / "mlruns").exists()  # a dry run records nothing


def test_train_records_a_finished_run(cli, trained):
    run = get_run(trained)
    assert run.status == "FINISHED" and run.plugin == "toy"


def test_resume_by_run_id_continues_the_same_run(cli, trained):
    res = cli("train", "--resume", trained, "train.steps=15", "--no-progress")
    assert res.exit_code == 0, res.output
    assert trained in res.output
    final = checkpoint.load(local_path(get_run(trained).artifact_uri) / checkpoint.FINAL)
    assert final["step"] == 15


def test_same_seed_gives_the_same_images(cli, trained, workdir):
    for name, seed in (("a.png", 3), ("b.png", 3), ("c.png", 4)):
        res = cli("sample", "--run", trained, "--seed", seed, "--n", 4, "--out", workdir / name)
        assert res.exit_code == 0, res.output
    a, b, c = ((workdir / n).read_bytes() for n in ("a.png", "b.png", "c.png"))
    assert a == b and a != c


def test_sample_newest_run_of_a_plugin_into_a_folder(cli, trained, workdir):
    res = cli("sample", "--plugin", "toy", "--n", 3, "--out", workdir / "imgs", "scale=0.5")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (workdir / "imgs").iterdir()) == [
        "00000.png",
        "00001.png",
        "00002.png",
    ]


def test_sample_seeds_give_one_image_per_seed(cli, trained, workdir):
    res = cli("sample", "--run", trained, "--seeds", "0-2,7", "--out", workdir / "s")
    assert res.exit_code == 0, res.output
    assert len(list((workdir / "s").iterdir())) == 4


def test_sample_from_a_checkpoint_file(cli, trained, workdir):
    ck = local_path(get_run(trained).artifact_uri) / checkpoint.LAST
    res = cli("sample", "--checkpoint", ck, "--out", workdir / "g.png")
    assert res.exit_code == 0, res.output
    assert (workdir / "g.png").stat().st_size > 0


def test_runs_list_shows_the_run(cli, trained):
    res = cli("runs", "list")
    assert res.exit_code == 0 and trained in res.output and "FINISHED" in res.output


# ---------------------------------------------------------------- bad input: exit 2, no traceback


def test_typo_in_recipe_key(cli, workdir):
    res = cli("train", write_recipe(workdir / "t.yaml"), "train.setps=3")
    _assert_bad_input(res, "train.setps", "did you mean 'steps'")


def test_unknown_plugin(cli, workdir):
    res = cli("train", write_recipe(workdir / "t.yaml", {**TOY_RECIPE, "plugin": "tyo"}))
    _assert_bad_input(res, "unknown plugin 'tyo'", "did you mean 'toy'")


def test_missing_recipe_file(cli):
    _assert_bad_input(cli("train", "nope.yaml"), "nope.yaml", "not found")


def test_missing_data_folder(cli, workdir):
    raw = {**TOY_RECIPE, "data": {"kind": "images", "root": "no/such/folder"}}
    _assert_bad_input(
        cli("train", write_recipe(workdir / "t.yaml", raw), "--no-progress"), "no/such/folder"
    )
    assert not (workdir / "mlruns").exists()  # nothing half-recorded


def test_unreadable_image_names_the_file(cli, workdir):
    folder = workdir / "imgs"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"not a png at all")
    raw = {**TOY_RECIPE, "data": {"kind": "images", "root": str(folder), "image_size": 8}}
    _assert_bad_input(
        cli("train", write_recipe(workdir / "t.yaml", raw), "--no-progress"), "broken.png"
    )


def test_unknown_sampler_option_lists_the_valid_ones(cli, trained, workdir):
    res = cli("sample", "--run", trained, "truncaton=0.5", "--out", workdir / "x.png")
    _assert_bad_input(res, "truncaton", "Valid options: scale")


def test_run_id_that_does_not_exist(cli):
    _assert_bad_input(
        cli("sample", "--run", "0123456789abcdef", "--out", "x.png"), "no run '0123456789abcdef'"
    )


def test_corrupt_checkpoint(cli, workdir):
    bad = workdir / "bad.pt"
    bad.write_bytes(b"\x00" * 100)
    _assert_bad_input(
        cli("sample", "--checkpoint", bad), "bad.pt", "not a readable genctl checkpoint"
    )


def test_foreign_checkpoint(cli, workdir):
    foreign = workdir / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, foreign)
    _assert_bad_input(cli("train", "--resume", foreign), "not a genctl checkpoint")


def test_sample_with_no_finished_run(cli):
    _assert_bad_input(cli("sample", "--plugin", "toy"), "no finished toy run")


def test_bad_seeds(cli, trained):
    _assert_bad_input(cli("sample", "--run", trained, "--seeds", "a-b"), "--seeds")


def test_recipes_validate_reports_errors(cli, workdir):
    bad = write_recipe(workdir / "bad.yaml", {**TOY_RECIPE, "train": {"steps": -1}})
    _assert_bad_input(cli("recipes", "validate", bad), "train.steps")


def test_binary_recipe_file(cli, workdir):
    (workdir / "model.yaml").write_bytes(bytes(range(256)) * 4)
    _assert_bad_input(cli("train", workdir / "model.yaml"), "binary file, not a YAML recipe")


def test_recipe_in_latin1(cli, workdir):
    (workdir / "r.yaml").write_bytes("name: caf\xe9\nplugin: toy\n".encode("latin-1"))
    _assert_bad_input(
        cli("train", workdir / "r.yaml"), "not UTF-8 text", "Save the recipe as UTF-8"
    )


def test_recipe_path_that_is_a_folder(cli, workdir):
    _assert_bad_input(cli("train", workdir), "is a folder, not a file")


def test_billion_laughs_recipe(cli, workdir):
    # 9**9 strings behind 9 nested aliases: validating model.latent used to run out of memory
    items = ['&a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    items += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    bomb = workdir / "bomb.yaml"
    latent = "[" + ", ".join(items) + "]"
    bomb.write_text("name: x\nplugin: toy\ndata: {kind: shapes}\nmodel: {latent: " + latent + "}\n")
    _assert_bad_input(cli("train", bomb, "--dry-run"), "expands to over", "aliases")


def test_override_of_an_unknown_section_names_the_override(cli, workdir):
    res = cli("train", write_recipe(workdir / "t.yaml"), "trian.steps=5", "--dry-run")
    _assert_bad_input(res, "override 'trian.steps=5'", "unknown recipe section 'trian'", "'train'")


def test_override_of_an_unknown_section_when_resuming(cli, trained):
    _assert_bad_input(cli("train", "--resume", trained, "trian.steps=5"), "unknown recipe section")


def test_file_that_is_not_a_checkpoint(cli, workdir):
    (workdir / "notes.pt").write_text("hello, these are my notes")
    for command in (["train", "--resume"], ["sample", "--checkpoint"]):
        res = cli(*command, workdir / "notes.pt")
        _assert_bad_input(res, "notes.pt", "not a readable genctl checkpoint")


def test_resume_with_a_checkpoint_of_another_family(cli, trained):
    # a dcgan recipe resumed from the toy run's checkpoint: said so, before any data is read
    quickstart = REPO / "recipes" / "quickstart.yaml"
    res = cli("train", quickstart, "data.size=64", "--no-progress", "--resume", trained)
    _assert_bad_input(res, "is a checkpoint of a toy model, but the recipe trains dcgan")


def test_image_folder_of_zero_byte_files(cli, workdir):
    folder = workdir / "imgs"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.png").write_bytes(b"")
    raw = {**TOY_RECIPE, "data": {"kind": "images", "root": str(folder), "image_size": 8}}
    res = cli("train", write_recipe(workdir / "t.yaml", raw), "--no-progress")
    _assert_bad_input(res, "0.png", "empty (0 bytes)")
    assert "BytesIO" not in res.output


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_image_folder_of_truncated_files(cli, workdir, suffix):
    folder = workdir / "imgs"
    folder.mkdir()
    for i in range(3):
        pixels = np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}{suffix}")
        data = (folder / f"{i}{suffix}").read_bytes()
        (folder / f"{i}{suffix}").write_bytes(data[: len(data) // 2])
    raw = {**TOY_RECIPE, "data": {"kind": "images", "root": str(folder), "image_size": 8}}
    res = cli("train", write_recipe(workdir / "t.yaml", raw), "--no-progress")
    _assert_bad_input(res, f"{suffix}", "truncated")


@pytest.mark.parametrize(
    "command",
    [["--help"], ["train", "--help"], ["sample", "--help"], ["plugins", "list", "--help"]],
)
def test_help_exits_cleanly(command):
    res = CliRunner().invoke(app, command)
    assert res.exit_code == 0 and "Usage" in res.output and "error:" not in res.output


# ---------------------------------------------------------------- conditional models: the classes drawn


class LabelledToyOptions(Schema):
    model_config = Schema.model_config | {"populate_by_name": True}

    scale: float = 1.0
    class_: int | None = Field(None, alias="class", ge=0)


class LabelledToySampler(toy.ToySampler):
    """A class-conditional toy: image i's top-left pixel is labels[i] / (K - 1), so the class each
    image was drawn with can be read back from the files `genctl sample` writes."""

    def __init__(self, config, nets, info):
        super().__init__(config, nets, info)
        self.num_classes = info.num_classes

    def sample(self, n, options, generator, inputs=None, labels=None):
        if labels is None:  # called without genctl: the core's default labels
            labels = labels_to_draw(self, n, options)
        images = super().sample(n, options, generator).clone()
        images[:, :, 0, 0] = labels[:, None].float() / (self.num_classes - 1)
        return images


LABELLED_TOY = ModelSpec(
    name="ltoy",
    task="conditional",
    config=toy.ToyConfig,
    build=toy.build,
    objective=toy.ToyObjective,
    sampler=LabelledToySampler,
    sampler_options=LabelledToyOptions,
)


class LabelledToyPlugin:
    @genctl.hookimpl
    def genctl_register_models(self, registry):
        registry.add(LABELLED_TOY)


def use_labelled_toy(monkeypatch) -> None:
    """`toy` and `ltoy` (class-conditional on the shapes' 3 classes) as installed plugins."""
    ps = genctl.plugins.load_plugins(extra={"toy": toy, "ltoy": LabelledToyPlugin()})
    monkeypatch.setattr(genctl.plugins, "plugins", lambda: ps)


def drawn_classes(folder) -> list[int]:
    """The class of each image `genctl sample` wrote to ``folder``, in file-name order."""
    out = []
    for path in sorted(folder.glob("*.png")):
        pixel = np.array(Image.open(path)).reshape(-1)[0]  # top-left, first channel
        out.append(round(pixel / 127.5))
    return out


@pytest.fixture
def labelled(workdir, monkeypatch):
    use_labelled_toy(monkeypatch)
    raw = {**TOY_RECIPE, "name": "ltoy-shapes", "plugin": "ltoy"}
    runner = CliRunner()
    res = runner.invoke(
        app,
        ["train", str(write_recipe(workdir / "ltoy.yaml", raw)), "train.steps=2", "--no-progress"],
    )
    assert res.exit_code == 0, res.output
    return res.output.split("run ")[1].split()[0]


def test_sample_seeds_of_a_conditional_model_draw_class_seed_mod_k(cli, labelled, workdir):
    res = cli("sample", "--run", labelled, "--seeds", "0-9", "--out", workdir / "seeds")
    assert res.exit_code == 0, res.output
    assert drawn_classes(workdir / "seeds") == [s % 3 for s in range(10)]


def test_sample_seeds_keep_each_seeds_class_whatever_the_range(cli, labelled, workdir):
    res = cli("sample", "--run", labelled, "--seeds", "4,8", "--out", workdir / "two")
    assert res.exit_code == 0, res.output
    assert drawn_classes(workdir / "two") == [1, 2]


def test_sample_n_of_a_conditional_model_draws_the_classes_in_turn(cli, labelled, workdir):
    res = cli("sample", "--run", labelled, "--n", 7, "--out", workdir / "n")
    assert res.exit_code == 0, res.output
    assert drawn_classes(workdir / "n") == [0, 1, 2, 0, 1, 2, 0]


def test_sample_class_option_still_picks_one_class(cli, labelled, workdir):
    res = cli("sample", "--run", labelled, "--seeds", "0-4", "--out", workdir / "c", "class=2")
    assert res.exit_code == 0, res.output
    assert drawn_classes(workdir / "c") == [2] * 5


def test_sample_class_out_of_range_is_bad_input(cli, labelled, workdir):
    res = cli("sample", "--run", labelled, "--out", workdir / "x.png", "class=3")
    _assert_bad_input(res, "class=3 is out of range", "classes 0 to 2")


# ---------------------------------------------------------------- genctl ui


@pytest.fixture
def no_server(monkeypatch):
    """`genctl ui` without starting the server: what it would start is recorded instead."""
    import genctl.tracking

    started = {}

    def fake_ui(uri, host, port, browse=None):
        started.update(host=host, port=port, browse=browse)
        return 0

    monkeypatch.setattr(genctl.tracking, "ui", fake_ui)
    monkeypatch.setattr(genctl.tracking, "can_open_browser", lambda: True)
    return started


def test_ui_opens_on_the_runs_of_the_newest_runs_experiment(cli, trained, no_server):
    from genctl.tracking import client

    exp_id = client().get_run(trained).info.experiment_id
    res = cli("ui", "--port", 5123)
    assert res.exit_code == 0, res.output
    url = f"http://127.0.0.1:5123/#/experiments/{exp_id}/runs?workflowType=machine_learning"
    assert url in res.output and no_server["browse"] == url
    assert cli("ui", "--no-browser").exit_code == 0 and no_server["browse"] is None


def test_ui_on_an_unknown_experiment_is_bad_input(cli, trained, no_server):
    _assert_bad_input(cli("ui", "--experiment", "nope"), "no experiment 'nope'", "toy")
    assert not no_server  # no server started


# ---------------------------------------------------------------- the record of a run


def test_a_run_records_its_recipe_as_source_and_its_data_as_dataset_input(cli, trained, workdir):
    from genctl.data import load_dataset
    from genctl.recipe import load
    from genctl.tracking import client

    run = client().get_run(trained)
    assert run.data.tags["mlflow.source.name"] == str(workdir / "toy.yaml")
    assert run.data.tags["mlflow.source.type"] == "LOCAL"
    assert "mlflow.source.git.commit" not in run.data.tags  # the working folder is no checkout
    (data,) = run.inputs.dataset_inputs
    expected = load_dataset(load(workdir / "toy.yaml").data).fingerprint
    assert (data.dataset.name, data.dataset.digest) == ("shapes", expected)
    assert {t.key: t.value for t in data.tags}["mlflow.data.context"] == "training"
    assert '"images": 64' in data.dataset.profile


# ---------------------------------------------------------------- runs list --sort / --where


@pytest.fixture
def scored(workdir):
    """Three finished runs with an eval/fid each: name -> run id."""
    from genctl.tracking import PLUGIN_TAG, Tracker

    ids = {}
    for name, fid in (("thirty", 30.0), ("ten", 10.0), ("twenty", 20.0)):
        tracker = Tracker(experiment="toy", run_name=name)
        tracker.set_tags({PLUGIN_TAG: "toy"})
        tracker.log_metrics({"eval/fid": fid}, 100)
        tracker.finish()
        ids[name] = tracker.run_id
    return ids


def _listed(res) -> list[str]:
    assert res.exit_code == 0, res.output
    return [line.split()[1] for line in res.output.splitlines()[1:] if line.strip()]


def test_runs_list_sorts_by_a_metric(cli, scored):
    assert _listed(cli("runs", "list", "--sort", "eval/fid")) == ["ten", "twenty", "thirty"]
    assert _listed(cli("runs", "list", "--sort", "eval/fid desc")) == ["thirty", "twenty", "ten"]


def test_runs_list_filters_in_mlflow_search_syntax(cli, scored):
    res = cli("runs", "list", "--where", "metrics.`eval/fid` < 25", "--sort", "eval/fid")
    assert _listed(res) == ["ten", "twenty"]


def test_runs_list_with_a_filter_mlflow_cannot_read_is_bad_input(cli, scored):
    _assert_bad_input(cli("runs", "list", "--where", "fid <"), "--where 'fid <'", "search syntax")
    _assert_bad_input(cli("runs", "list", "--sort", "eval/fid sideways"), "--sort")
