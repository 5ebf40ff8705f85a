"""Training from streamed data: the in-memory run's weights, and exact resume."""

from __future__ import annotations

import os
import signal

import torch

from genctl import checkpoint
from genctl.recipe import apply_overrides, validate
from genctl.testing import _same_state
from genctl.tracking import get_run, local_path
from genctl.trainer import train
from tests import toy
from tests.data.test_stream import section
from tests.helpers import TOY_RECIPE


def _toy_recipe(data: dict, *overrides: str):
    raw = {**TOY_RECIPE, "data": {**data, "image_size": 8, "flip": True, "labels": False}}
    return validate(apply_overrides(raw, list(overrides)), spec=toy.SPEC)


def _final_weights(run_id: str) -> dict[str, torch.Tensor]:
    ck = checkpoint.load(local_path(get_run(run_id).artifact_uri) / checkpoint.FINAL)
    return {f"{n}.{k}": v for n, sd in {**ck["nets"], **ck["ema"]}.items() for k, v in sd.items()}


def test_a_streaming_run_trains_the_weights_of_the_in_memory_run(workdir):
    data = section(workdir, "zip")
    memory = train(_toy_recipe(data), progress=False)
    streamed = train(_toy_recipe(data, "data.stream=true", "data.workers=2"), progress=False)
    _same_state("toy", _final_weights(memory.run_id), _final_weights(streamed.run_id), "weights")


def test_an_interrupted_streaming_run_resumes_to_the_uninterrupted_weights(workdir, monkeypatch):
    recipe = _toy_recipe(section(workdir, "webdataset"), "data.stream=true", "data.workers=2")
    full = train(recipe, progress=False)
    original = toy.ToyObjective.loss

    def loss_with_ctrl_c(self, group, batch, step):
        if step == 7 and group == "g":
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C mid-epoch (23 images, batches of 8)
        return original(self, group, batch, step)

    monkeypatch.setattr(toy.ToyObjective, "loss", loss_with_ctrl_c)
    first = train(recipe, progress=False)
    assert first.interrupted and first.step == 8
    monkeypatch.setattr(toy.ToyObjective, "loss", original)
    resumed = train(recipe, resume=first.run_id, progress=False)
    assert resumed.step == 20
    _same_state("toy", _final_weights(full.run_id), _final_weights(first.run_id), "weights")
