"""The final model as an MLflow logged model (a pyfunc from code, nothing pickled), and the
model registry: `genctl runs register`, then `genctl sample/evaluate --model models:/NAME@alias`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from genctl import checkpoint, testing, tracking
from genctl.cli import app
from genctl.recipe import apply_overrides, load_yaml, validate
from genctl.resolve import resolve_checkpoint
from tests.conftest import REPO
from tests.helpers import use_toy_plugin, write_recipe
from tests.plugins.test_contract import TINY

mlflow = pytest.importorskip("mlflow")

# a GAN, a diffusion model and a translation model, each trained for two steps at 16 px
FAMILIES = {
    "dcgan": ["data.image_size=16", "data.channels=1"],
    "ddpm": ["data.image_size=16", "data.channels=1", "model.timesteps=10"],
    "pix2pix": ["data.image_size=16", "data.channels=3"],
}


def _train(name: str, root, *extra: str) -> str:
    from genctl.trainer import train

    raw = apply_overrides(
        load_yaml(REPO / "recipes" / f"{name}.yaml"), [*TINY[name], *FAMILIES[name]]
    )
    spec_task = {"dcgan": "unconditional", "ddpm": "unconditional", "pix2pix": "paired"}[name]
    raw["data"] = testing.synthetic_data_section(spec_task, raw["data"], root / "data")
    raw["evaluate"] = {"every": None}
    raw["tracking"] = {"experiment": "logged-models"}
    raw = apply_overrides(
        raw,
        [
            "train.steps=2",
            "train.batch_size=4",
            "train.log_every=1",
            "train.sample_every=2",
            "train.checkpoint_every=2",
            "train.grid_size=2",
            *extra,
        ],
    )
    return train(validate(raw, None), progress=False).run_id


@pytest.fixture(scope="module")
def runs(tmp_path_factory, _empty_mlflow_db):
    """One tiny run of each family in one store, trained once for the module."""
    import os
    import shutil

    root = tmp_path_factory.mktemp("logged-models")
    shutil.copyfile(_empty_mlflow_db, root / "mlflow.db")
    old = os.getcwd()
    os.chdir(root)
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.setenv("GENCTL_CACHE", str(root / ".cache"))
    torch.set_num_threads(1)
    try:
        yield root, {name: _train(name, root) for name in FAMILIES}
    finally:
        mp.undo()
        os.chdir(old)


def _load(runs, name):
    root, ids = runs
    model_id = tracking.logged_model_of(ids[name])
    assert model_id is not None, f"the {name} run logged no model"
    return mlflow.pyfunc.load_model(f"models:/{model_id}"), model_id


@pytest.mark.parametrize("name", ["dcgan", "ddpm"])
def test_a_generators_logged_model_draws_the_images_genctl_sample_draws(runs, name):
    root, ids = runs
    model, _ = _load(runs, name)
    images = model.predict({"n": 3, "seed": 5})
    assert isinstance(images, np.ndarray) and images.dtype == np.uint8
    assert images.shape == (3, 16, 16, 1)
    assert images.std() > 0  # pictures, not a constant
    # image i of seed s is image i of `genctl sample --seed s`, whatever n
    res = CliRunner().invoke(
        app, ["sample", "--run", ids[name], "--n", "2", "--seed", "5", "--out", str(root / name)]
    )
    assert res.exit_code == 0, res.output
    for i in range(2):
        png = np.asarray(Image.open(root / name / f"{i:05d}.png"))
        assert np.array_equal(png, images[i, ..., 0])


def test_a_translation_models_logged_model_translates_the_images_it_is_given(runs):
    model, _ = _load(runs, "pix2pix")
    inputs = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    out = model.predict({"images": inputs, "seed": 0})
    assert out.shape == (2, 16, 16, 3) and out.dtype == np.uint8
    assert not np.array_equal(out[0], out[1])  # each its own input's translation
    with pytest.raises(Exception, match="translates images"):
        model.predict({"n": 2})


def test_the_logged_model_is_code_and_genctls_checkpoint_not_a_pickle(runs):
    _, model_id = _load(runs, "dcgan")
    logged = tracking.client().get_logged_model(model_id)
    folder = tracking.local_path(logged.artifact_location)
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert "artifacts/final.pt" in files and "mlflow_model.py" in files
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle"))]
    assert "mlflow.pyfunc.loaders.code_model" in (folder / "MLmodel").read_text()
    checkpoint.load(folder / "artifacts" / "final.pt")  # torch.load(weights_only=True) reads it


def test_the_logged_model_carries_the_runs_metrics_of_its_step(runs):
    root, ids = runs
    _, model_id = _load(runs, "dcgan")
    logged = tracking.client().get_logged_model(model_id)
    assert logged.source_run_id == ids["dcgan"]
    assert {m.key for m in logged.metrics} >= {"train/loss_g", "train/loss_d"}
    assert {m.step for m in logged.metrics} == {2}


def test_a_bad_request_is_bad_input(runs):
    model, _ = _load(runs, "dcgan")
    with pytest.raises(Exception, match="unknown option 'nonsense'"):
        model.predict({"n": 1, "options": {"nonsense": 1}})
    with pytest.raises(Exception, match="unknown request keys"):
        model.predict({"count": 1})


# ---------------------------------------------------------------- the registry, from the CLI


@pytest.fixture
def cli(workdir, monkeypatch):
    use_toy_plugin(monkeypatch)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


def _toy_run(cli, workdir, *overrides):
    res = cli(
        "train", write_recipe(workdir / "toy.yaml"), "train.steps=4", *overrides, "--no-progress"
    )
    assert res.exit_code == 0, res.output
    return res.output.split("run ")[1].split()[0]


def test_register_then_sample_by_alias_gives_the_runs_images(cli, workdir):
    run = _toy_run(cli, workdir)
    res = cli("runs", "register", run, "--name", "toy-gen", "--alias", "champion")
    assert res.exit_code == 0, res.output
    assert "version 1" in res.output and "models:/toy-gen@champion" in res.output
    by_alias = cli("sample", "--model", "models:/toy-gen@champion", "--n", "4", "--out", "a.png")
    by_run = cli("sample", "--run", run, "--n", "4", "--out", "b.png")
    assert by_alias.exit_code == 0 and by_run.exit_code == 0, by_alias.output + by_run.output
    assert (workdir / "a.png").read_bytes() == (workdir / "b.png").read_bytes()
    by_version = cli("sample", "--model", "models:/toy-gen/1", "--n", "4", "--out", "c.png")
    assert by_version.exit_code == 0, by_version.output
    assert (workdir / "c.png").read_bytes() == (workdir / "a.png").read_bytes()


def test_the_alias_moves_to_the_newest_registration(cli, workdir):
    first, second = _toy_run(cli, workdir), _toy_run(cli, workdir, "train.seed=1")
    for run in (first, second):
        assert (
            cli("runs", "register", run, "--name", "toy-gen", "--alias", "champion").exit_code == 0
        )
    path = resolve_checkpoint("models:/toy-gen@champion")
    assert checkpoint.load(path)["run_id"] == second


def test_register_logs_the_model_of_a_run_that_has_none(cli, workdir):
    run = _toy_run(cli, workdir, "tracking.log_model=false")
    assert tracking.logged_model_of(run) is None
    res = cli("runs", "register", run, "--name", "toy-gen")
    assert res.exit_code == 0, res.output
    assert tracking.logged_model_of(run) is not None
    assert cli("sample", "--model", "models:/toy-gen/1", "--out", "x.png").exit_code == 0


def test_register_with_a_bad_name_or_alias_is_bad_input(cli, workdir):
    run = _toy_run(cli, workdir)
    for args, message in [
        (["--name", "a/b"], "is not a model name"),
        (["--name", "toy-gen", "--alias", "latest"], "is reserved"),
        (["--name", "toy-gen", "--alias", "v2"], "is reserved"),
        (["--name", "toy-gen", "--alias", "a b"], "is not an alias"),
    ]:
        res = cli("runs", "register", run, *args)
        assert res.exit_code == 2 and message in res.output, res.output
    assert not tracking.client().search_registered_models()  # nothing half-registered


def test_sample_and_evaluate_with_an_unknown_model_are_bad_input(cli, workdir):
    run = _toy_run(cli, workdir)
    assert cli("runs", "register", run, "--name", "toy-gen", "--alias", "champion").exit_code == 0
    for model, message in [
        ("models:/toy-gen@staging", "has no alias @staging"),
        ("models:/toy-gen/9", "has no version 9"),
        ("models:/other@champion", "no registered model 'other'"),
        ("toy-gen", "is not a registered model"),
        ("models:/toy-gen", "is not a registered model reference"),
    ]:
        for command in ("sample", "evaluate"):
            res = cli(command, "--model", model)
            assert res.exit_code == 2, res.output
            assert message in res.output and "Traceback" not in res.output, res.output
