"""Anomaly scores of the autoencoder and the VAE: what each kind is, and genctl score /
genctl evaluate --metrics auroc end to end on the built-in shapes (no files needed)."""

from __future__ import annotations

import csv

import pytest
import torch
from genctl_autoencoder.loss import gaussian_kl
from typer.testing import CliRunner

from genctl.cli import app
from genctl.tracking import get_run
from tests.helpers import TOY_RECIPE, use_toy_plugin, write_recipe
from tests.plugins.test_autoencoder import gen, make, uint8_images


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_autoencoder_scores_its_reconstruction_error_per_image():
    sampler = make(variational=False)[3]
    x = uint8_images(5)
    scores = sampler.anomaly_scores(x, gen(0))
    assert list(scores) == ["mse", "nmse"]
    recon = sampler.reconstruct(x.float() / 127.5 - 1)
    expected = (recon - x.float() / 255).square().flatten(1).mean(1)
    assert torch.allclose(scores["mse"], expected)
    energy = (x.float() / 255).square().flatten(1).mean(1)
    assert torch.allclose(scores["nmse"], expected / energy)
    # a blank image (no ink) still gets a finite score
    blank = torch.zeros(1, 1, 16, 16, dtype=torch.uint8)
    assert torch.isfinite(sampler.anomaly_scores(blank, gen(0))["nmse"]).all()
    assert torch.equal(sampler.anomaly_scores(x[2:3], gen(9))["mse"], scores["mse"][2:3])


def test_vae_adds_the_posterior_kl_and_the_negative_elbo_of_its_likelihood():
    sampler = make(variational=True, recon="bce")[3]
    x = uint8_images(4)
    scores = sampler.anomaly_scores(x, gen(1))
    assert list(scores) == ["mse", "nmse", "kl", "nelbo"]
    assert torch.equal(scores["nelbo"], sampler.nll(x, None, gen(1)))
    mu, logvar = sampler.net.posterior(x.float() / 127.5 - 1)
    assert torch.allclose(scores["kl"], gaussian_kl(mu, logvar))
    assert torch.equal(sampler.anomaly_scores(x, gen(1))["nelbo"], scores["nelbo"])
    assert (scores["nelbo"] > scores["kl"]).all()  # the reconstruction term is positive (BCE)


# ---------------------------------------------------------------- end to end


@pytest.fixture
def cli(workdir):
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


TINY = [
    "model.width=4",
    "model.latent_channels=2",
    "data.image_size=16",
    "data.size=24",
    "train.steps=2",
    "train.batch_size=4",
    "train.grid_size=4",
    "train.sample_every=2",
    "train.checkpoint_every=2",
    "--no-progress",
]


def test_training_without_a_class_then_scoring_it_as_the_anomalies(cli, workdir):
    from genctl.data import DataConfig, load_dataset
    from genctl.recipe import recipes_dir

    res = cli(
        "train",
        recipes_dir() / "vae.yaml",
        *TINY,
        "data.exclude_classes=[2]",
        "evaluate.metrics=[auroc]",
        "evaluate.anomaly_classes=[2]",
        "evaluate.every=2",
    )
    assert res.exit_code == 0, res.output
    run_id = res.output.split("run ")[1].split()[0]
    run = get_run(run_id)
    for kind in ("mse", "nmse", "kl", "nelbo"):  # measured during training, at step 2
        assert 0 <= run.metrics[f"eval/auroc_{kind}"] <= 1
        assert 0 <= run.metrics[f"eval/auprc_{kind}"] <= 1
    test = load_dataset(DataConfig(kind="shapes", image_size=16, size=24, split="test"))
    n_anomalous = int((test.labels == 2).sum())
    assert run.tags["eval.anomaly_num_anomalous"] == str(n_anomalous)
    assert run.tags["eval.anomaly_num_normal"] == str(len(test) - n_anomalous)
    assert run.tags["eval.anomaly_classes"] == "2 (triangle)"
    assert run.tags["eval.anomaly_trained_without"] == "[2]"
    assert run.tags["eval.anomaly_split"] == "test"

    # genctl evaluate: another class as the anomalies, said to have been seen in training
    res = cli(
        "evaluate", "--run", run_id, "--metrics", "auroc", "--anomaly-classes", "0", "--no-progress"
    )
    assert res.exit_code == 0, res.output
    assert "eval/auroc_nelbo" in res.output and "anomalies: class 0 (circle)" in res.output
    assert "were in the training data" in res.output
    assert get_run(run_id).tags["eval.anomaly_classes"] == "0 (circle)"

    # genctl score: a CSV row per image, a column per kind, reconstructions beside
    from PIL import Image

    (workdir / "in").mkdir()
    for i in range(3):
        Image.new("RGB", (20, 20), (60 * i, 200, 90)).save(workdir / "in" / f"im{i}.png")
    res = cli(
        "score",
        "--run",
        run_id,
        "--input",
        workdir / "in",
        "--out",
        workdir / "s.csv",
        "--recon",
        workdir / "recon",
    )
    assert res.exit_code == 0, res.output
    rows = list(csv.reader((workdir / "s.csv").open()))
    assert rows[0] == ["file", "mse", "nmse", "kl", "nelbo"]
    assert [r[0] for r in rows[1:]] == ["im0.png", "im1.png", "im2.png"]
    assert all(float(v) >= 0 for r in rows[1:] for v in r[1:])
    assert sorted(p.name for p in (workdir / "recon").iterdir()) == [
        "im0.png",
        "im1.png",
        "im2.png",
    ]
    # the same seed gives the same scores (the negative ELBO draws a posterior sample)
    res = cli("score", "--run", run_id, "--input", workdir / "in", "--out", workdir / "t.csv")
    assert res.exit_code == 0 and (workdir / "t.csv").read_text() == (workdir / "s.csv").read_text()


def _bad(res, *fragments):
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    for f in fragments:
        assert f in res.output, res.output


def test_auroc_without_anomaly_classes_or_of_a_model_without_scores_fails_before_training(
    cli, workdir, monkeypatch
):
    from genctl.recipe import recipes_dir

    every = "evaluate.every=2"
    res = cli("train", recipes_dir() / "autoencoder.yaml", *TINY, "evaluate.metrics=[auroc]", every)
    _bad(res, "evaluate.anomaly_classes")
    use_toy_plugin(monkeypatch)
    toy = write_recipe(workdir / "toy.yaml")
    res = cli("train", toy, "evaluate.metrics=[auroc]", "evaluate.anomaly_classes=[1]", every)
    _bad(res, "auroc", "gives none")


def test_score_with_a_model_that_gives_no_anomaly_scores_is_bad_input(cli, workdir, monkeypatch):
    use_toy_plugin(monkeypatch)
    res = cli(
        "train", write_recipe(workdir / "toy.yaml", TOY_RECIPE), "train.steps=2", "--no-progress"
    )
    assert res.exit_code == 0, res.output
    run_id = res.output.split("run ")[1].split()[0]
    from PIL import Image

    Image.new("RGB", (8, 8)).save(workdir / "x.png")
    _bad(cli("score", "--run", run_id, "--input", workdir / "x.png"), "gives no anomaly scores")
    _bad(cli("score", "--input", workdir / "x.png"), "exactly one of")
