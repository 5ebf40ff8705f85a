"""The final model as an MLflow logged model (a pyfunc from code, nothing pickled), the model
registry (`genctl runs register`, then `genctl sample/evaluate --model models:/NAME@alias`), and
`genctl runs compare` on the same tiny runs of three families."""

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
        ids = {name: _train(name, root) for name in FAMILIES}
        ids["pix2pix-seed1"] = _train("pix2pix", root, "train.seed=1")  # a second translator
        yield root, ids
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


def test_mlflow_models_serve_answers_a_json_request_with_images(runs):
    import json

    from fastapi.testclient import TestClient
    from mlflow.pyfunc import scoring_server

    model, _ = _load(runs, "dcgan")
    client = TestClient(scoring_server.init(model))  # the app `mlflow models serve` runs
    request = {"inputs": {"n": 2, "seed": 5, "options": {}}}
    res = client.post(
        "/invocations",
        content=json.dumps(request),
        headers={"Content-Type": "application/json"},
    )
    assert res.status_code == 200, res.text
    served = np.array(res.json()["predictions"], dtype=np.uint8)
    assert np.array_equal(served, model.predict({"n": 2, "seed": 5}))


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


def test_evaluate_a_registered_model_logs_to_its_run_and_links_the_numbers(
    cli, workdir, inception_weights, monkeypatch
):
    import genctl.evaluation as ev
    from genctl.evaluation import fidelity

    monkeypatch.setenv(fidelity.WEIGHTS_ENV, str(inception_weights))
    ev._REAL_MEMO.clear()
    run = _toy_run(cli, workdir)
    assert cli("runs", "register", run, "--name", "toy-gen", "--alias", "champion").exit_code == 0
    small = ("--metrics", "kid", "--num-samples", 4, "--batch-size", 4, "--no-progress")
    res = cli("evaluate", "--model", "models:/toy-gen@champion", *small)
    assert res.exit_code == 0, res.output
    assert f"logged to run {run} at step 4" in res.output
    model = tracking.client().get_logged_model(tracking.logged_model_of(run))
    linked = {m.key: m.step for m in model.metrics}
    assert linked.get("eval/kid_mean") == 4  # the UI shows the model's evaluation beside it


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


# ---------------------------------------------------------------- comparing runs (the same runs)


def _tile(picture: np.ndarray, row: int, col: int, side: int) -> np.ndarray:
    from genctl.compare import LABEL_WIDTH, PAD

    y, x = PAD + row * (side + PAD), LABEL_WIDTH + PAD + col * (side + PAD)
    return picture[y : y + side, x : x + side]


def test_compare_shows_two_families_images_of_the_same_seeds_row_by_row(runs):
    root, ids = runs
    out = root / "gan-vs-ddpm.png"
    res = CliRunner().invoke(
        app,
        [
            "runs",
            "compare",
            ids["dcgan"],
            ids["ddpm"],
            "--seed",
            "3",
            "--n",
            "4",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "step 2" in res.output
    picture = np.asarray(Image.open(out).convert("RGB"))
    for row, name in enumerate(["dcgan", "ddpm"]):
        model, _ = _load(runs, name)
        drawn = model.predict({"n": 4, "seed": 3})  # what genctl sample --seed 3 draws
        for col in range(4):
            tile = _tile(picture, row, col, 64)[::4, ::4]  # 16 px shown 4x, nearest
            assert np.array_equal(tile[..., 0], drawn[col, ..., 0]), (name, col)


def test_compare_table_lists_the_params_that_differ_and_the_metrics(runs):
    from genctl.compare import Row, table

    root, ids = runs
    infos = [tracking.get_run(ids[n]) for n in ("dcgan", "ddpm")]
    rows = [
        Row(i.run_id, i.name, i.plugin, 2, np.zeros((1, 8, 8, 3), np.uint8), i.params, i.metrics)
        for i in infos
    ]
    lines = {line[0]: line[1:] for line in table(rows)}
    assert lines["plugin"] == ["dcgan", "ddpm"]
    assert "train.steps" not in lines  # the same in both: not a difference
    assert "train/loss_g" in lines and lines["train/loss_g"][1] == "-"  # ddpm has no loss_g


def test_compare_refuses_runs_of_different_tasks_saying_which(runs):
    root, ids = runs
    res = CliRunner().invoke(app, ["runs", "compare", ids["dcgan"], ids["pix2pix"]])
    assert res.exit_code == 2, res.output
    assert "different tasks" in res.output
    assert "is unconditional" in res.output and "is paired" in res.output


def test_compare_translates_the_same_inputs_with_every_run(runs):
    root, ids = runs
    a, b = ids["pix2pix"], ids["pix2pix-seed1"]
    res = CliRunner().invoke(app, ["runs", "compare", a, b])
    assert res.exit_code == 2 and "--input" in res.output, res.output
    folder = root / "inputs"
    folder.mkdir(exist_ok=True)
    inputs = np.random.default_rng(1).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    for k, im in enumerate(inputs):
        Image.fromarray(im).save(folder / f"{k}.png")
    out = root / "translations.png"
    res = CliRunner().invoke(
        app, ["runs", "compare", a, b, "--input", str(folder), "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    picture = np.asarray(Image.open(out).convert("RGB"))
    for col in range(2):  # the first row shows the inputs, then each run's translations
        assert np.array_equal(_tile(picture, 0, col, 64)[::4, ::4], inputs[col])
    model, _ = _load(runs, "pix2pix")
    drawn = model.predict({"images": inputs, "seed": 0})
    assert np.array_equal(_tile(picture, 1, 1, 64)[::4, ::4], drawn[1])


def test_compare_needs_two_runs_kept_steps_and_a_png(runs):
    root, ids = runs
    res = CliRunner().invoke(app, ["runs", "compare", ids["dcgan"], ids["dcgan"]])
    assert res.exit_code == 2 and "named twice" in res.output, res.output
    res = CliRunner().invoke(app, ["runs", "compare", ids["dcgan"]])
    assert res.exit_code == 2 and "two runs or more" in res.output, res.output
    res = CliRunner().invoke(app, ["runs", "compare", ids["dcgan"], ids["ddpm"], "--step", "1"])
    assert res.exit_code == 2 and "kept no checkpoint of step 1" in res.output, res.output
    res = CliRunner().invoke(app, ["runs", "compare", ids["dcgan"], ids["ddpm"], "-o", "a.jpg"])
    assert res.exit_code == 2 and "is not a .png file" in res.output, res.output


def test_compare_log_records_the_picture_in_a_comparison_run(runs):
    root, ids = runs
    out = root / "logged.png"
    res = CliRunner().invoke(
        app, ["runs", "compare", ids["dcgan"], ids["ddpm"], "--n", "2", "--out", str(out), "--log"]
    )
    assert res.exit_code == 0, res.output
    run_id = res.output.split("comparison run ")[1].split()[0]
    run = tracking.get_run(run_id)
    assert run.experiment == "compare"
    assert run.tags["genctl.compare.runs"] == f"{ids['dcgan']},{ids['ddpm']}"
    logged = tracking.local_path(run.artifact_uri) / "logged.png"
    assert logged.read_bytes() == out.read_bytes()
    assert run_id not in {r.run_id for r in tracking.search_runs()}  # not a model: not listed
