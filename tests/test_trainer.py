"""The generic trainer: schedule, EMA, LR schedules, tracking, and exact resume."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from torch import nn

from genctl import checkpoint
from genctl.recipe import TrainConfig, apply_overrides, validate
from genctl.tracking import get_run, local_path
from genctl.trainer import _Logged, _update_ema, lr_factor, train
from tests import toy
from tests.helpers import TOY_RECIPE


def _recipe(*overrides):
    return validate(apply_overrides(TOY_RECIPE, list(overrides)), spec=toy.SPEC)


def _weights(path):
    ck = checkpoint.load(path)
    return {f"{n}.{k}": v for n, sd in {**ck["nets"], **ck["ema"]}.items() for k, v in sd.items()}


def test_run_is_recorded_in_mlflow(workdir):
    result = train(_recipe(), progress=False)
    run = get_run(result.run_id)
    assert run.status == "FINISHED"
    assert run.params["train.steps"] == "20" and run.params["model.latent"] == "4"
    assert run.tags["genctl.plugin"] == "toy"
    assert {"train/loss_d", "train/loss_g", "train/d_real", "train/images_per_s"} <= set(
        run.metrics
    )
    art = local_path(run.artifact_uri)
    assert (art / "recipe.yaml").is_file()
    assert checkpoint.load(art / checkpoint.FINAL)["step"] == 20
    assert checkpoint.load(art / checkpoint.LAST)["step"] == 20
    assert (workdir / "mlflow.db").is_file() and (workdir / "mlruns").is_dir()


def test_metrics_are_logged_at_every_log_interval(workdir):
    from genctl.tracking import client

    result = train(_recipe(), progress=False)
    history = client().get_metric_history(result.run_id, "train/loss_g")
    assert [m.step for m in history] == [5, 10, 15, 20]


def test_sample_grids_are_logged_with_their_step(workdir):
    result = train(_recipe(), progress=False)
    images = local_path(get_run(result.run_id).artifact_uri) / "images"
    names = sorted(p.name for p in images.iterdir() if p.suffix == ".png")
    assert any("step+10+" in n for n in names) and any("step+20+" in n for n in names)


def test_schedule_decides_how_many_updates_each_group_gets(workdir):
    result = train(_recipe("model.d_steps=3", "train.steps=6"), progress=False)
    run = get_run(result.run_id)
    ck = checkpoint.load(local_path(run.artifact_uri) / checkpoint.LAST)
    assert int(ck["objective"]["updates"]) == 6 * (3 + 1)
    assert ck["optimizers"]["d"]["state"][0]["step"] == 6 * 3
    assert ck["optimizers"]["g"]["state"][0]["step"] == 6


def test_interrupted_run_resumes_to_bitwise_identical_weights(workdir, monkeypatch):
    full = train(_recipe(), progress=False)
    full_weights = _weights(local_path(get_run(full.run_id).artifact_uri) / checkpoint.FINAL)

    original = toy.ToyObjective.loss

    def loss_with_ctrl_c(self, group, batch, step):
        if step == 7 and group == "g":
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of training
        return original(self, group, batch, step)

    monkeypatch.setattr(toy.ToyObjective, "loss", loss_with_ctrl_c)
    first = train(_recipe(), progress=False)
    assert first.interrupted and first.step == 8
    assert get_run(first.run_id).status == "KILLED"
    monkeypatch.setattr(toy.ToyObjective, "loss", original)

    resumed = train(_recipe(), resume=first.run_id, progress=False)
    assert resumed.run_id == first.run_id and resumed.step == 20
    run = get_run(first.run_id)
    assert run.status == "FINISHED"
    resumed_weights = _weights(local_path(run.artifact_uri) / checkpoint.FINAL)
    assert resumed_weights.keys() == full_weights.keys()
    for k in full_weights:
        assert torch.equal(full_weights[k], resumed_weights[k]), k


def test_init_from_starts_from_trained_weights(workdir):
    first = train(_recipe("train.steps=5"), progress=False)
    trained = _weights(local_path(get_run(first.run_id).artifact_uri) / checkpoint.FINAL)
    r = _recipe("train.steps=1", f"train.init_from={first.run_id}", "train.optimizer.lr=1e-12")
    second = train(r, progress=False)
    after = _weights(local_path(get_run(second.run_id).artifact_uri) / checkpoint.FINAL)
    # one step at a negligible learning rate: the weights are the (EMA) weights it started from
    assert torch.allclose(after["generator.0.weight"], trained["generator_ema.0.weight"], atol=1e-6)


def test_ema_moves_toward_the_network_by_one_minus_decay():
    net, avg = nn.Linear(2, 2), nn.Linear(2, 2)
    before = avg.weight.detach().clone()
    cfg = TrainConfig(ema={"networks": ["g"], "decay": 0.75})
    _update_ema({"g_ema": avg}, {"g": net}, cfg, step=10)
    assert torch.allclose(avg.weight, before + 0.25 * (net.weight - before))


def test_logged_values_are_read_as_their_means_over_the_interval():
    logged, values = _Logged(), torch.linspace(0, 1, 2 * _Logged.FOLD + 45)
    for step, v in enumerate(values, start=1):  # stacked FOLD at a time, the rest read as kept
        logged.add("loss_d", v.clone(), step, copy=False)
        logged.add("d_real", 2 * v, step)
    means, firsts = logged.read()
    assert means["loss_d"] == pytest.approx(values.mean().item(), rel=1e-6)
    assert means["d_real"] == pytest.approx(2 * values.mean().item(), rel=1e-6)
    assert firsts == {} and logged.read() == ({}, {})  # each read starts afresh


def test_a_logged_value_changed_in_place_afterwards_counts_as_it_was():
    logged, running = _Logged(), torch.tensor(1.0)  # an objective's state, logged as it is
    logged.add("count", running, 1)
    running.add_(10.0)
    logged.add("count", running, 2)
    running.add_(10.0)
    assert logged.read()[0] == {"count": pytest.approx((1.0 + 11.0) / 2)}


def test_the_first_non_finite_loss_is_named_with_its_step():
    logged = _Logged()
    for step in range(1, _Logged.FOLD + 60):
        bad = step in (_Logged.FOLD + 7, _Logged.FOLD + 30)
        logged.add("loss_d", torch.tensor(float("nan") if bad else 0.5), step, copy=False)
        logged.add("loss_g", torch.tensor(float("inf") if step == 150 else 0.5), step, copy=False)
    assert logged.first_nonfinite() == {"d": _Logged.FOLD + 7, "g": 150}
    assert [torch.isfinite(v).all().item() for v in logged.losses().values()] == [False, False]
    means, firsts = logged.read()
    assert firsts == {"d": _Logged.FOLD + 7, "g": 150}
    assert torch.isnan(torch.tensor(means["loss_d"])) and means["loss_g"] == float("inf")


def test_linear_decay_is_constant_then_falls_to_zero():
    cfg = TrainConfig(steps=100, lr_schedule={"kind": "linear_decay", "decay_start": 0.5})
    assert lr_factor(cfg, 0) == 1.0 and lr_factor(cfg, 50) == 1.0
    assert lr_factor(cfg, 75) == pytest.approx(0.5)
    assert lr_factor(cfg, 100) == pytest.approx(0.0)


def test_cosine_with_warmup():
    cfg = TrainConfig(steps=110, lr_schedule={"kind": "cosine", "warmup_steps": 10})
    assert lr_factor(cfg, 0) == pytest.approx(0.1)
    assert lr_factor(cfg, 10) == pytest.approx(1.0)
    assert lr_factor(cfg, 60) == pytest.approx(0.5)
    assert lr_factor(cfg, 110) == pytest.approx(0.0, abs=1e-9)
