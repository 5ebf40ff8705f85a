"""Training threads: the cores shared among the trainings on a machine, OMP_NUM_THREADS first."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import genctl.threads as threads
from genctl.recipe import apply_overrides, validate
from genctl.threads import choose_threads, default_threads, live_trainings, registered
from genctl.trainer import train
from tests import toy
from tests.helpers import TOY_RECIPE


def test_default_divides_the_cores_among_the_processes():
    assert default_threads(2, 1) == 2
    assert default_threads(2, 3) == 1  # never below one
    assert default_threads(16, 3) == 5
    assert default_threads(8, 0) == 8


def test_omp_num_threads_wins_over_the_default():
    env = {"OMP_NUM_THREADS": "3", "LOCAL_WORLD_SIZE": "4"}
    assert choose_threads(None, env, cores=16, processes=1) == (3, "OMP_NUM_THREADS")


def test_the_recipe_wins_over_the_environment():
    assert choose_threads(2, {"OMP_NUM_THREADS": "3"}, cores=16, processes=1)[0] == 2


def test_torchrun_ranks_on_the_node_divide_the_cores():
    n, why = choose_threads(None, {"LOCAL_WORLD_SIZE": "4"}, cores=16, processes=1)
    assert n == 4 and "4 ranks" in why


def test_independent_runs_divide_the_cores():
    assert choose_threads(None, {"OMP_NUM_THREADS": ""}, cores=16, processes=2)[0] == 8


def test_registry_counts_live_trainings_and_drops_stale_ones(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    (tmp_path / f"{int(done.stdout)}.pid").write_text("")  # a training that crashed
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / f"{other.pid}.pid").write_text(threads._start_time(other.pid))
        with registered(tmp_path) as running:
            assert running == 2  # this process and the sleeping one
            assert (tmp_path / f"{os.getpid()}.pid").exists()
        assert not (tmp_path / f"{int(done.stdout)}.pid").exists()  # stale entry removed
        assert not (tmp_path / f"{os.getpid()}.pid").exists()  # unregistered on the way out
        if threads._start_time(other.pid):  # Linux: a reused process id is not counted
            (tmp_path / f"{other.pid}.pid").write_text("1")
            assert live_trainings(tmp_path) == 0
    finally:
        other.kill()
        other.wait()


@pytest.mark.parametrize("configured", [1, 2])
def test_training_runs_with_the_threads_chosen(workdir, monkeypatch, configured):
    seen = []
    original = toy.ToyObjective.loss

    def loss(self, group, batch, step):
        seen.append(torch.get_num_threads())
        return original(self, group, batch, step)

    monkeypatch.setattr(toy.ToyObjective, "loss", loss)
    monkeypatch.setattr(threads, "registry_dir", lambda: workdir / "registry")
    before = torch.get_num_threads()
    recipe = validate(
        apply_overrides(TOY_RECIPE, ["train.steps=2", f"train.threads={configured}"]),
        spec=toy.SPEC,
    )
    train(recipe, progress=False)
    assert seen and set(seen) == {configured}
    assert torch.get_num_threads() == before  # the process's setting is given back
