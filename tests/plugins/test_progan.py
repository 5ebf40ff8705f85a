"""ProGAN: equalized learning rate, pixel norm, minibatch stddev, fade-in, growth state, sampler."""

from __future__ import annotations

import math
import os
import signal

import pytest
import torch
import torch.nn.functional as F
from genctl_progan.config import ProGANConfig
from genctl_progan.layers import EqualConv2d, EqualLinear, minibatch_stddev, pixel_norm
from genctl_progan.loss import GrowthSchedule, ProGANObjective, gradient_penalty
from genctl_progan.model import build
from genctl_progan.sampler import ProGANSampler, ProGANSamplerOptions

from genctl import checkpoint
from genctl.errors import BadInput
from genctl.plugins import get_spec
from genctl.recipe import apply_overrides, validate
from genctl.sampling import parse_options
from genctl.spec import DataInfo
from tests.plugins.penalty import UnderflowCritic, fp16, fp16_scaler

TINY = {"latent_dim": 8, "channel_base": 64, "max_channels": 8, "stable_steps": 2, "fade_steps": 4}
DATA = DataInfo("unconditional", channels=3, image_size=16)


def tiny(**overrides) -> tuple[ProGANConfig, dict, ProGANObjective]:
    torch.manual_seed(0)
    config = ProGANConfig(**{**TINY, **overrides})
    nets = build(config, DATA)
    return config, nets, ProGANObjective(config, nets, DATA)


# ---------------------------------------------------------------- layers


def test_equal_conv_scales_its_weights_by_the_he_constant_at_runtime():
    conv = EqualConv2d(3, 5, 3)
    x = torch.randn(2, 3, 8, 8)
    he = math.sqrt(2) / math.sqrt(3 * 3 * 3)
    expected = F.conv2d(x, conv.weight * he, conv.bias, padding=1)
    assert torch.allclose(conv(x), expected, atol=1e-6)
    assert 0.8 < conv.weight.std().item() < 1.2  # stored weights stay N(0, 1)


def test_equal_linear_learning_rate_multiplier_keeps_the_effective_weight_scale():
    slow = EqualLinear(64, 32, lr_mul=0.01)
    x = torch.randn(4, 64)
    expected = F.linear(x, slow.weight * math.sqrt(2) / 8 * 0.01, slow.bias * 0.01)
    assert torch.allclose(slow(x), expected, atol=1e-6)
    assert 80 < slow.weight.std().item() < 120  # stored at N(0, 1/lr_mul): small steps, same output


def test_pixel_norm_gives_every_pixel_unit_mean_square():
    x = torch.randn(3, 16, 5, 5) * 7
    ms = pixel_norm(x).pow(2).mean(dim=1)
    assert torch.allclose(ms, torch.ones_like(ms), atol=1e-4)


def test_minibatch_stddev_adds_one_channel_holding_the_group_stddev():
    x = torch.randn(8, 6, 4, 4)
    y = minibatch_stddev(x, group_size=4)
    assert y.shape == (8, 7, 4, 4) and torch.equal(y[:, :6], x)
    # sample i is in group i % 2; the value is the mean over features of the std over the group
    group0 = x[[0, 2, 4, 6]]
    expected = group0.var(dim=0, unbiased=False).add(1e-8).sqrt().mean()
    assert torch.allclose(y[0, 6], expected.expand(4, 4), atol=1e-5)
    assert torch.allclose(y[6, 6], y[0, 6]) and not torch.allclose(y[1, 6], y[0, 6])


def test_minibatch_stddev_is_zero_for_a_batch_of_identical_images():
    x = torch.randn(1, 6, 4, 4).expand(4, -1, -1, -1)
    assert minibatch_stddev(x, 4)[:, 6].abs().max() < 1e-3


# ---------------------------------------------------------------- fade-in


def test_generator_fade_in_at_alpha_0_is_the_previous_resolution_upsampled():
    _, nets, _ = tiny()
    g, z = nets["generator"], torch.randn(4, 8)
    old = g(z, depth=1, alpha=1.0)  # 8x8
    faded = g(z, depth=2, alpha=0.0)  # 16x16
    assert faded.shape[-1] == 16
    assert torch.allclose(faded, F.interpolate(old, scale_factor=2, mode="nearest"), atol=1e-6)


def test_generator_fade_in_at_alpha_1_is_the_new_resolution_and_blends_between():
    _, nets, _ = tiny()
    g, z = nets["generator"], torch.randn(4, 8)
    new, old = g(z, 2, 1.0), F.interpolate(g(z, 1, 1.0), scale_factor=2, mode="nearest")
    assert torch.allclose(g(z, 2, 0.9999999), new, atol=1e-5)
    assert torch.allclose(g(z, 2, 0.25), 0.75 * old + 0.25 * new, atol=1e-5)


def test_critic_fade_in_at_alpha_0_scores_the_average_pooled_image():
    _, nets, _ = tiny()
    d, x = nets["critic"], torch.randn(4, 3, 16, 16)
    assert torch.allclose(d(x, depth=2, alpha=0.0), d(F.avg_pool2d(x, 2), depth=1), atol=1e-5)


def test_growth_schedule_stable_then_fade_then_stable_per_resolution():
    s = GrowthSchedule(start_depth=0, max_depth=2, stable_steps=2, fade_steps=4)
    stages = [s.at(step) for step in range(16)]
    assert stages[:2] == [(0, 0, 1.0)] * 2
    assert [a for _, _, a in stages[2:6]] == [0.0, 0.25, 0.5, 0.75]
    assert all(p == 1 and d == 1 for p, d, _ in stages[2:6])
    assert stages[6:8] == [(2, 1, 1.0)] * 2
    assert stages[8] == (3, 2, 0.0)
    assert stages[12:] == [(4, 2, 1.0)] * 4  # the last resolution trains on
    assert s.total_steps() == 14


def test_real_images_are_average_pooled_to_the_current_resolution():
    _, _, objective = tiny()
    objective.set_step(0)  # 4x4
    x = torch.randn(2, 3, 16, 16)
    assert torch.allclose(objective.real_at_stage(x), F.avg_pool2d(x, 4))
    objective.set_step(3)  # fading in 8x8 at alpha 0.25: blend of 4x4 (upsampled) and 8x8
    x8, x4 = F.avg_pool2d(x, 2), F.avg_pool2d(x, 4)
    expected = 0.75 * F.interpolate(x4, scale_factor=2) + 0.25 * x8
    assert torch.allclose(objective.real_at_stage(x), expected, atol=1e-6)


def test_growth_state_round_trips_and_is_recorded_in_the_generator():
    _, nets, objective = tiny()
    objective.schedule(4)  # fading in 8x8, alpha 0.5
    state = objective.state_dict()
    assert state == {"phase": 1, "depth": 1, "alpha": 0.5}
    assert nets["generator"].stage() == (1, 0.5)
    restored_state = torch.load(_saved(state), weights_only=True)
    _, nets2, fresh = tiny()
    fresh.load_state_dict(restored_state)
    assert fresh.state_dict() == state and nets2["generator"].stage() == (1, 0.5)


def _saved(obj):
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


# ---------------------------------------------------------------- the objective


def test_critic_loss_is_finite_and_trains_only_the_blocks_in_use():
    _, nets, objective = tiny()
    objective.schedule(2)  # fading in 8x8
    loss, logs = objective.loss("d", {"image": torch.rand(4, 3, 16, 16) * 2 - 1}, 2)
    loss.backward()
    assert torch.isfinite(loss) and logs["gp"] >= 0 and logs["resolution"] == 8
    critic = nets["critic"]
    assert (
        critic.from_rgb["8"].weight.grad is not None
        and critic.from_rgb["4"].weight.grad is not None
    )
    assert critic.from_rgb["16"].weight.grad is None and critic.blocks[1].conv1.weight.grad is None


def test_losses_compute_under_bf16_autocast_the_gpu_default():
    _, _, objective = tiny()
    objective.schedule(3)  # mid fade-in: both resolutions' paths run
    batch = {"image": torch.rand(4, 3, 16, 16) * 2 - 1}
    for group in ("d", "g"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _ = objective.loss(group, batch, 3)
        loss.backward()
        assert torch.isfinite(loss), group


def test_gradient_penalty_under_fp16_uses_the_trainers_loss_scale():
    _, _, objective = tiny()
    objective.critic = UnderflowCritic(3 * 4 * 4)  # at 4x4; input gradient 1e-4 per pixel
    batch = {"image": torch.rand(4, 3, 16, 16) * 2 - 1}
    torch.manual_seed(0)
    exact = objective.loss("d", batch, 0)[1]["gp"]
    assert exact.item() == pytest.approx((1 - math.sqrt(48) * 1e-4) ** 2, rel=1e-5)
    objective.grad_scaler = fp16_scaler()  # what the trainer gives under precision: fp16
    torch.manual_seed(0)
    with fp16():
        gp = objective.loss("d", batch, 0)[1]["gp"]
    assert gp.item() == pytest.approx(exact.item(), abs=1e-5)  # unscaled, the gradient was 0: 1.0


def test_gradient_penalty_is_zero_for_a_critic_with_unit_gradient_norm():
    direction = torch.randn(3, 4, 4)
    direction /= direction.norm()

    def critic(x):
        return (x * direction).flatten(1).sum(1)

    real, fake = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    assert gradient_penalty(critic, real, fake).item() < 1e-10
    assert gradient_penalty(lambda x: 3 * critic(x), real, fake).item() == pytest.approx(4.0)


# ---------------------------------------------------------------- sampler


def test_sampler_below_the_final_size_returns_that_resolution_unless_asked_to_upsample():
    _, nets, objective = tiny()
    objective.schedule(0)  # still at 4x4 of 16x16
    sampler = ProGANSampler(None, nets, DATA)
    a = sampler.sample(3, ProGANSamplerOptions(), torch.Generator().manual_seed(7))
    b = sampler.sample(3, ProGANSamplerOptions(), torch.Generator().manual_seed(7))
    assert a.shape == (3, 3, 4, 4) and torch.equal(a, b)  # never silently upsampled
    assert a.min() >= 0 and a.max() <= 1
    big = sampler.sample(3, ProGANSamplerOptions(upsample=True), torch.Generator().manual_seed(7))
    assert big.shape == (3, 3, 16, 16)
    assert torch.equal(big, a.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3))


def _recipe(**sections):
    raw = {**RECIPE, **{k: {**RECIPE.get(k, {}), **v} for k, v in sections.items()}}
    return validate(apply_overrides(raw, []))


def test_train_steps_shorter_than_the_growth_schedule_is_bad_input_saying_the_steps_needed():
    # 4 -> 16: stable 2, then 2 x (fade 4 + stable 2) = 14 steps to reach 16x16 and train it
    with pytest.raises(BadInput) as err:
        _recipe(model={"stable_steps": 2, "fade_steps": 4}, data={"image_size": 16})
    msg = str(err.value)
    assert "train.steps=8" in msg and "train.steps >= 14" in msg and "16x16" in msg
    assert "model.stable_steps=1 model.fade_steps=1" in msg  # a schedule that fits 8 steps
    ok = _recipe(
        model={"stable_steps": 2, "fade_steps": 4}, data={"image_size": 16}, train={"steps": 14}
    )
    assert ok.train.steps == 14


def test_evaluation_before_the_last_fade_in_ends_is_bad_input():
    # 4 -> 8: the 8x8 fade-in ends at step 2 + 3 = 5; an evaluation at step 4 scores 4x4 blends
    with pytest.raises(BadInput, match=r"evaluate.every=4 .* step 5"):
        _recipe(evaluate={"every": 4, "metrics": ["fid"]})
    assert _recipe(evaluate={"every": 8, "metrics": ["fid"]}).evaluate.every == 8


def test_sampler_draws_from_the_ema_generator_when_there_is_one():
    _, nets, _ = tiny()
    _, ema, _ = tiny(latent_dim=8)
    with torch.no_grad():
        for p in ema["generator"].parameters():
            p.add_(0.5)
    with_ema = ProGANSampler(None, {**nets, "generator_ema": ema["generator"]}, DATA)
    only_ema = ProGANSampler(None, {"generator": ema["generator"]}, DATA)
    a, b = (
        s.sample(2, ProGANSamplerOptions(), torch.Generator().manual_seed(0))
        for s in (with_ema, only_ema)
    )
    assert torch.equal(a, b)


def test_unknown_sampler_option_is_bad_input_listing_the_valid_ones():
    with pytest.raises(BadInput) as err:
        parse_options(get_spec("progan"), ["truncation=0.5"])
    assert "upsample" in str(err.value)


def test_image_size_that_is_not_a_power_of_two_is_bad_input():
    with pytest.raises(BadInput, match="power of two"):
        build(ProGANConfig(**TINY), DataInfo("unconditional", 3, 24))


# ---------------------------------------------------------------- end to end


RECIPE = {
    "name": "progan-test",
    "plugin": "progan",
    "model": {**TINY, "latent_dim": 8, "stable_steps": 2, "fade_steps": 3},
    "data": {"kind": "shapes", "image_size": 8, "size": 32},
    "train": {
        "steps": 8,
        "batch_size": 4,
        "log_every": 4,
        "sample_every": 8,
        "checkpoint_every": 4,
        "grid_size": 4,
        "optimizer": {"lr": 1e-3, "betas": [0.0, 0.99]},
        "ema": {"networks": ["generator"], "decay": 0.9},
    },
}


def test_run_interrupted_during_a_fade_in_resumes_to_identical_weights(workdir, monkeypatch):
    from genctl.tracking import get_run, local_path
    from genctl.trainer import train

    recipe = validate(apply_overrides(RECIPE, []))
    full = train(recipe, progress=False)
    full_ck = checkpoint.load(local_path(get_run(full.run_id).artifact_uri) / checkpoint.FINAL)

    original = ProGANObjective.loss

    def ctrl_c_at_step_3(self, group, batch, step):
        if step == 3 and group == "g":  # in the middle of the 4 -> 8 fade-in
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, group, batch, step)

    monkeypatch.setattr(ProGANObjective, "loss", ctrl_c_at_step_3)
    first = train(recipe, progress=False)
    last = checkpoint.load(local_path(get_run(first.run_id).artifact_uri) / checkpoint.LAST)
    assert first.interrupted and last["objective"] == {"phase": 1, "depth": 1, "alpha": 1 / 3}
    monkeypatch.setattr(ProGANObjective, "loss", original)

    resumed = train(recipe, resume=first.run_id, progress=False)
    resumed_ck = checkpoint.load(
        local_path(get_run(resumed.run_id).artifact_uri) / checkpoint.FINAL
    )
    for group in ("nets", "ema"):
        for net, state in full_ck[group].items():
            for k, v in state.items():
                assert torch.equal(v, resumed_ck[group][net][k]), f"{group}.{net}.{k}"
    assert int(full_ck["nets"]["generator"]["depth"]) == 1  # 8x8, fully faded in
