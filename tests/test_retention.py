"""Checkpoint retention: train.keep_checkpoints / train.keep_every keep older checkpoints, and
`genctl sample --run ID --step S` samples one of them."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from genctl import checkpoint
from genctl.cli import app
from genctl.tracking import get_run, local_path
from tests.helpers import use_toy_plugin, write_recipe


@pytest.fixture
def cli(workdir, monkeypatch):
    use_toy_plugin(monkeypatch)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


def _train(cli, workdir, *overrides) -> str:
    recipe = write_recipe(workdir / "toy.yaml")
    res = cli(
        "train", recipe, "train.steps=20", "train.checkpoint_every=5", *overrides, "--no-progress"
    )
    assert res.exit_code == 0, res.output
    return res.output.split("run ")[1].split()[0]


def _kept(run_id: str) -> list[str]:
    return sorted(
        p.name for p in (local_path(get_run(run_id).artifact_uri) / "checkpoints").iterdir()
    )


def test_keep_the_newest_n_and_every_kth(cli, workdir):
    run_id = _train(cli, workdir, "train.keep_checkpoints=2", "train.keep_every=10")
    # checkpoints at 5, 10, 15, 20: the newest two (15, 20) and the multiples of 10 (10, 20)
    assert _kept(run_id) == ["last.pt", "step-000010.pt", "step-000015.pt", "step-000020.pt"]
    folder = local_path(get_run(run_id).artifact_uri) / "checkpoints"
    assert checkpoint.load(folder / "step-000015.pt")["step"] == 15

    res = cli("sample", "--run", run_id, "--step", 15, "--n", 2, "--out", workdir / "s15")
    assert res.exit_code == 0, res.output
    assert "step 15" in res.output and len(list((workdir / "s15").iterdir())) == 2

    res = cli("sample", "--run", run_id, "--step", 5, "--out", workdir / "s5.png")
    assert res.exit_code == 2, res.output
    assert "no checkpoint of step 5" in res.output and "10, 15, 20" in res.output


def test_nothing_kept_by_default(cli, workdir):
    assert _kept(_train(cli, workdir)) == ["last.pt"]


def test_keep_every_off_the_checkpoint_steps_is_bad_input(cli, workdir):
    res = cli(
        "train",
        write_recipe(workdir / "toy.yaml"),
        "train.checkpoint_every=5",
        "train.keep_every=7",
        "--dry-run",
    )
    assert res.exit_code == 2, res.output
    assert "keep_every" in res.output and "checkpoint_every=5" in res.output
