"""genctl.ema: EMA copies keep batch-norm statistics of their own."""

from __future__ import annotations

import torch
from torch import nn

from genctl.ema import BatchNormRefresh, EMAUpdate, make_ema, recalibrate_batchnorm, update_ema


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        self.register_buffer("stage", torch.tensor(0.0))  # state, not a statistic


def test_ema_averages_batch_norm_statistics_with_the_weights_and_copies_other_buffers():
    nets = {"generator": Net()}
    ema = make_ema(nets, ["generator"])
    live, avg = nets["generator"], ema["generator_ema"]
    bn_live, bn_avg = live.body[1], avg.body[1]
    expected_mean, expected_var = bn_live.running_mean.clone(), bn_live.running_var.clone()
    for k in range(1, 4):
        with torch.no_grad():
            bn_live.running_mean.fill_(float(k))
            bn_live.running_var.fill_(float(10 * k))
            bn_live.num_batches_tracked.fill_(k)
            live.stage.fill_(0.5 * k)
        update_ema(ema, nets, decay=0.9)
        expected_mean += 0.1 * (bn_live.running_mean - expected_mean)
        expected_var += 0.1 * (bn_live.running_var - expected_var)
    # the EMA's statistics follow its own average, not the live network's latest values
    assert torch.allclose(bn_avg.running_mean, expected_mean)
    assert torch.allclose(bn_avg.running_var, expected_var)
    assert not torch.allclose(bn_avg.running_mean, bn_live.running_mean)
    assert int(bn_avg.num_batches_tracked) == 3 and float(avg.stage) == 1.5  # copied


def test_decay_0_copies_the_live_network():
    nets = {"generator": Net()}
    ema = make_ema(nets, ["generator"])
    with torch.no_grad():
        nets["generator"].body[1].running_mean.fill_(3.0)
        nets["generator"].body[0].weight.add_(1.0)
    update_ema(ema, nets, decay=0.0)
    for a, b in zip(
        ema["generator_ema"].state_dict().values(),
        nets["generator"].state_dict().values(),
        strict=True,
    ):
        assert torch.equal(a, b)


def test_an_update_built_once_averages_bitwise_as_update_ema_and_follows_reassigned_buffers():
    torch.manual_seed(0)
    nets = {"generator": Net()}
    once, each = make_ema(nets, ["generator"]), make_ema(nets, ["generator"])
    update = EMAUpdate(once, nets)
    live = nets["generator"]
    for k in range(1, 4):
        with torch.no_grad():
            live.body[0].weight.add_(torch.randn(4, 3))
            live.body[1].running_mean.add_(torch.randn(4))
        live.stage = torch.tensor(float(k))  # reassigned, not changed in place
        update(0.9)
        update_ema(each, nets, decay=0.9)
    for (key, a), b in zip(
        once["generator_ema"].state_dict().items(),
        each["generator_ema"].state_dict().values(),
        strict=True,
    ):
        assert torch.equal(a, b), key
    assert float(once["generator_ema"].stage) == 3.0


def test_recalibrated_statistics_are_those_of_the_inputs_and_the_mode_is_kept():
    torch.manual_seed(0)
    net = Net().eval()
    calls = [((torch.randn(8, 3) * 2 + 1,), {}) for _ in range(4)]
    state = torch.get_rng_state()
    recalibrate_batchnorm(net.body, calls)
    with torch.no_grad():
        h = [net.body[0](x) for (x,), _ in calls]
    bn = net.body[1]
    assert torch.allclose(bn.running_mean, torch.cat(h).mean(0), atol=1e-5)
    # the cumulative average of the per-batch (unbiased) variances
    assert torch.allclose(bn.running_var, torch.stack([x.var(0) for x in h]).mean(0), atol=1e-5)
    assert not net.body.training and bn.momentum == 0.1
    assert torch.equal(torch.get_rng_state(), state)


def test_refresh_gives_the_ema_copy_the_statistics_of_the_last_steps_inputs():
    torch.manual_seed(0)
    nets = {"generator": Net().body, "critic": nn.Linear(3, 1)}
    ema = make_ema(nets, ["generator", "critic"])
    refresh = BatchNormRefresh(ema, nets)
    assert list(refresh.calls) == ["generator_ema"]  # nothing to do for a copy without batch norm
    steps = [[torch.randn(16, 3) + k, torch.randn(16, 3) - k] for k in range(2)]
    for inputs in steps:  # two training steps, two forward passes each
        for x in inputs:
            nets["generator"](x)
        with torch.no_grad():
            nets["generator"][0].weight.mul_(2)  # the live weights move on
        update_ema(ema, nets, decay=0.5)
        refresh.updated()
    refresh.refresh()
    expected = Net().body
    expected.load_state_dict(ema["generator_ema"].state_dict())
    recalibrate_batchnorm(expected, [((x,), {}) for x in steps[-1]])  # the last step's inputs
    avg = ema["generator_ema"][1]
    assert torch.allclose(avg.running_mean, expected[1].running_mean)
    assert torch.allclose(avg.running_var, expected[1].running_var)
    before = avg.running_mean.clone()
    nets["generator"](torch.randn(16, 3) + 10)
    refresh.refresh()  # no EMA update since: nothing to recompute
    assert torch.equal(avg.running_mean, before)
    refresh.close()


def test_a_trained_ema_generator_keeps_its_own_batch_norm_statistics(workdir):
    from genctl import checkpoint
    from genctl.recipe import validate
    from genctl.tracking import get_run, local_path
    from genctl.trainer import train

    raw = {
        "name": "ema-bn",
        "plugin": "dcgan",
        "model": {"latent_dim": 8, "g_width": 4, "d_width": 4},
        "data": {"kind": "shapes", "image_size": 16, "size": 16},
        "train": {
            "steps": 3,
            "batch_size": 4,
            "grid_size": 4,
            "ema": {"networks": ["generator"], "decay": 0.9},
        },
    }
    result = train(validate(raw), progress=False)
    ck = checkpoint.load(local_path(get_run(result.run_id).artifact_uri) / checkpoint.FINAL)
    live, ema = ck["nets"]["generator"], ck["ema"]["generator_ema"]
    stats = [k for k in live if k.endswith(("running_mean", "running_var"))]
    assert stats
    # before, the EMA copy took the live network's statistics at every step
    assert all(not torch.allclose(live[k], ema[k]) for k in stats)


def test_a_run_interrupted_and_resumed_ends_with_the_same_ema_statistics(workdir, monkeypatch):
    import os
    import signal

    from genctl_dcgan import DCGANObjective

    from genctl import checkpoint
    from genctl.recipe import validate
    from genctl.tracking import get_run, local_path
    from genctl.trainer import train

    raw = {
        "name": "ema-bn-resume",
        "plugin": "dcgan",
        "model": {"latent_dim": 8, "g_width": 4, "d_width": 4},
        "data": {"kind": "shapes", "image_size": 16, "size": 16},
        "train": {
            "steps": 6,
            "batch_size": 4,
            "grid_size": 4,
            "checkpoint_every": 100,
            "ema": {"networks": ["generator"], "decay": 0.9},
        },
    }
    recipe = validate(raw)

    def final(run_id):
        path = local_path(get_run(run_id).artifact_uri) / checkpoint.FINAL
        return checkpoint.load(path)["ema"]["generator_ema"]

    full = final(train(recipe, progress=False).run_id)
    original = DCGANObjective.loss

    def ctrl_c_at_step_3(self, group, batch, step):
        if step == 3 and group == "g":
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, group, batch, step)

    monkeypatch.setattr(DCGANObjective, "loss", ctrl_c_at_step_3)
    first = train(recipe, progress=False)
    assert first.interrupted
    monkeypatch.setattr(DCGANObjective, "loss", original)
    resumed = final(train(recipe, resume=first.run_id, progress=False).run_id)
    for k, v in full.items():
        assert torch.equal(v, resumed[k]), k
