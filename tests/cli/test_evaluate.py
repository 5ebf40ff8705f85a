"""`genctl evaluate` end to end, and evaluation during `genctl train`, on the toy family.

Inception runs on the stand-in weights (``inception_weights``) over four images per set.
"""

from __future__ import annotations

import json
import urllib.error

import pytest
import torch
from typer.testing import CliRunner

import genctl.evaluation as ev
from genctl import checkpoint
from genctl.cli import app
from genctl.evaluation import fidelity
from genctl.tracking import get_run, local_path, search_runs
from tests.cli.test_cli import _assert_bad_input, use_labelled_toy
from tests.helpers import TOY_RECIPE, use_toy_plugin, write_recipe

SMALL = ("--num-samples", 4, "--batch-size", 4, "--no-progress")


@pytest.fixture
def cli(workdir, monkeypatch, inception_weights):
    use_toy_plugin(monkeypatch)
    monkeypatch.setenv(fidelity.WEIGHTS_ENV, str(inception_weights))
    ev._REAL_MEMO.clear()
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(app, [str(a) for a in args])

    return invoke


@pytest.fixture
def trained(cli, workdir) -> str:
    res = cli("train", write_recipe(workdir / "toy.yaml"), "train.steps=2", "--no-progress")
    assert res.exit_code == 0, res.output
    return res.output.split("run ")[1].split()[0]


def _offline(monkeypatch, tmp_path) -> None:
    """No Inception weights in the torch hub cache, and every download fails."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def fail(url, dst):
        raise urllib.error.URLError("no internet")

    monkeypatch.setattr(fidelity, "_download", fail)


def test_evaluate_run_logs_to_that_run_and_prints_a_table(cli, trained):
    res = cli("evaluate", "--run", trained, "--metrics", "kid,isc", *SMALL)
    assert res.exit_code == 0, res.output
    assert "eval/isc_mean" in res.output and "eval/kid_mean" in res.output
    assert "KID subset size 4 instead of 1000" in res.output
    run = get_run(trained)
    assert {"eval/isc_mean", "eval/kid_mean", "eval/kid_std"} <= set(run.metrics)
    assert run.tags["eval.num_generated"] == "4" and run.tags["eval.num_real"] == "4"
    assert run.tags["eval.weights_sha256"] == fidelity.file_sha256(fidelity.resolve_weights().path)
    assert run.status == "FINISHED"  # logging to a run does not change its status
    saved = list(
        (local_path(run.artifact_uri) / "evaluation").glob("step-00000002-evaluate-*.json")
    )
    assert (
        json.loads(saved[0].read_text())["metrics"]["eval/kid_mean"] == run.metrics["eval/kid_mean"]
    )


def _inputs(run_id: str) -> list[tuple[str, str, str]]:
    from genctl.tracking import client

    run = client().get_run(run_id)
    return [
        (d.dataset.name, d.dataset.digest, {t.key: t.value for t in d.tags}["mlflow.data.context"])
        for d in run.inputs.dataset_inputs
    ]


def test_evaluate_records_the_real_images_data_as_the_runs_evaluation_input(
    cli, workdir, monkeypatch
):
    from genctl.data import load_dataset
    from genctl.recipe import load
    from genctl.tracking import Tracker

    recipe = write_recipe(workdir / "toy.yaml")
    digest = load_dataset(load(recipe).data).fingerprint
    with monkeypatch.context() as m:  # a run from before genctl recorded its training data
        m.setattr(Tracker, "log_data", lambda *a, **k: None)
        res = cli("train", recipe, "train.steps=2", "--no-progress")
    run_id = res.output.split("run ")[1].split()[0]
    assert _inputs(run_id) == []
    assert cli("evaluate", "--run", run_id, "--metrics", "kid", *SMALL).exit_code == 0
    assert _inputs(run_id) == [("shapes", digest, "evaluation")]


def test_evaluating_on_the_training_data_keeps_its_training_record(cli, trained):
    before = _inputs(trained)
    assert cli("evaluate", "--run", trained, "--metrics", "kid", *SMALL).exit_code == 0
    assert _inputs(trained) == before and before[0][2] == "training"


def test_a_second_evaluation_uses_the_cached_real_statistics(cli, trained):
    first = cli("evaluate", "--run", trained, "--metrics", "kid", *SMALL)
    ev._REAL_MEMO.clear()  # as if a new process
    final = local_path(get_run(trained).artifact_uri) / checkpoint.FINAL
    second = cli("evaluate", "--checkpoint", final, "--metrics", "kid", *SMALL)
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    assert "computed, cached at" in first.output
    assert "from cache" in second.output


def test_evaluation_every_n_steps_during_training_logs_metrics_and_protocol(cli, workdir):
    recipe = write_recipe(workdir / "toy.yaml")
    res = cli(
        "train",
        recipe,
        "train.steps=4",
        "--no-progress",
        "evaluate.every=2",
        "evaluate.metrics=[kid]",
        "evaluate.num_samples=4",
        "evaluate.batch_size=4",
        "evaluate.best=kid_mean",
    )
    assert res.exit_code == 0, res.output
    run = get_run(res.output.split("run ")[1].split()[0])
    artifacts = local_path(run.artifact_uri)
    assert (
        "eval/kid_mean" in run.metrics
        and run.tags["eval.feature_extractor"] == "inception-v3-compat"
    )
    steps = [
        json.loads(p.read_text())["step"] for p in sorted((artifacts / "evaluation").glob("*.json"))
    ]
    assert steps == [2, 4]
    assert (artifacts / checkpoint.BEST).is_file()


def test_offline_without_weights_exits_2_saying_what_to_set(cli, trained, monkeypatch, tmp_path):
    monkeypatch.delenv(fidelity.WEIGHTS_ENV)
    _offline(monkeypatch, tmp_path)
    res = cli("evaluate", "--run", trained, *SMALL)
    _assert_bad_input(res, "GENCTL_INCEPTION_WEIGHTS", "evaluate.feature_extractor_weights")


def test_evaluate_needs_exactly_one_of_run_or_checkpoint(cli):
    _assert_bad_input(cli("evaluate"), "exactly one of --run")


def test_an_unknown_metric_exits_2_listing_the_known_ones(cli):
    _assert_bad_input(
        cli("evaluate", "--run", "x", "--metrics", "fid,fdi"), "unknown metric 'fdi'", "prc"
    )


def test_runs_list_shows_when_evaluation_protocols_differ(cli, workdir):
    from genctl.tracking import Tracker

    recipe = write_recipe(workdir / "toy.yaml")
    ids = []
    for _ in range(2):
        res = cli("train", recipe, "train.steps=1", "--no-progress")
        assert res.exit_code == 0, res.output
        ids.append(res.output.split("run ")[1].split()[0])
    for run_id, protocol in zip(ids, ("aaaaaaaaaaaa", "bbbbbbbbbbbb"), strict=True):
        tracker = Tracker(experiment="", run_name="", run_id=run_id)
        tracker.set_tags({"eval.protocol": protocol})
        tracker.finish("FINISHED")
    res = cli("runs", "list")
    assert (
        "[eval protocol aaaaaaaaaaaa]" in res.output
        and "[eval protocol bbbbbbbbbbbb]" in res.output
    )
    assert "2 different evaluation protocols" in res.output


def test_training_with_evaluation_but_no_weights_offline_fails_before_it_starts(
    cli, workdir, monkeypatch, tmp_path
):
    monkeypatch.delenv(fidelity.WEIGHTS_ENV)
    _offline(monkeypatch, tmp_path)
    res = cli("train", write_recipe(workdir / "toy.yaml"), "evaluate.every=10", "--no-progress")
    _assert_bad_input(res, "GENCTL_INCEPTION_WEIGHTS")
    assert search_runs() == []  # no run was started


def test_keeping_the_best_by_a_metric_that_is_not_measured_fails_before_training(cli, workdir):
    res = cli(
        "train",
        write_recipe(workdir / "toy.yaml"),
        "evaluate.every=2",
        "evaluate.metrics=[kid]",
        "evaluate.best=fid",
        "--no-progress",
    )
    _assert_bad_input(res, "evaluate.best: 'fid' is not measured", "kid_mean")


# ---------------------------------------------------------------- sampler options and labels


def test_evaluate_with_sampler_options_records_them_and_gets_another_protocol(cli, trained):
    plain = cli("evaluate", "--run", trained, "--metrics", "kid", *SMALL)
    assert plain.exit_code == 0, plain.output
    default_id = get_run(trained).tags["eval.protocol"]
    res = cli("evaluate", "--run", trained, "--metrics", "kid", *SMALL, "scale=0.5")
    assert res.exit_code == 0, res.output
    tags = get_run(trained).tags
    assert tags["eval.sampler"] == '{"scale": 0.5}' and tags["eval.labels"] == "none"
    assert tags["eval.protocol"] != default_id
    assert 'sampler {"scale": 0.5}' in res.output


def test_evaluate_an_unknown_sampler_option_exits_2_listing_the_valid_ones(cli, trained):
    res = cli("evaluate", "--run", trained, *SMALL, "guidance=3.0")
    _assert_bad_input(res, "unknown option 'guidance'", "scale")


def test_recipe_with_an_unknown_evaluate_sampler_option_exits_2_before_training(cli, workdir):
    res = cli(
        "train", write_recipe(workdir / "toy.yaml"), "evaluate.sampler.scael=0.5", "--no-progress"
    )
    _assert_bad_input(res, "unknown option 'evaluate.sampler.scael'", "scale")
    assert search_runs() == []


def test_evaluate_a_conditional_model_draws_balanced_labels(cli, workdir, monkeypatch):
    use_labelled_toy(monkeypatch)
    raw = {**TOY_RECIPE, "name": "ltoy-shapes", "plugin": "ltoy"}
    res = cli("train", write_recipe(workdir / "ltoy.yaml", raw), "train.steps=2", "--no-progress")
    assert res.exit_code == 0, res.output
    run_id = res.output.split("run ")[1].split()[0]
    res = cli("evaluate", "--run", run_id, "--metrics", "kid", *SMALL, "--num-samples", 6)
    assert res.exit_code == 0, res.output
    assert get_run(run_id).tags["eval.labels"] == "balanced"
    assert "labels balanced" in res.output


def test_a_checkpoint_from_another_store_is_scored_and_says_it_is_not_logged(
    cli, trained, workdir, monkeypatch
):
    final = local_path(get_run(trained).artifact_uri) / checkpoint.FINAL
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workdir / 'other.db'}")
    res = cli("evaluate", "--checkpoint", final, "--metrics", "kid", *SMALL)
    assert res.exit_code == 0, res.output  # the numbers stand; it was exit 2 after printing them
    assert "eval/kid_mean" in res.output
    assert f"not logged: the checkpoint's run {trained} is not in this tracking store" in res.output
