"""Cross-check with a peer: genctl_ddpm's schedules and DDPM/DDIM steps against diffusers'
``DDPMScheduler`` and ``DDIMScheduler`` on the same inputs and the same noise, to 1e-5."""

from __future__ import annotations

import pytest
import torch
from genctl_ddpm.scheduler import DDIMScheduler, DDPMScheduler, NoiseSchedule

diffusers = pytest.importorskip("diffusers", reason="diffusers (the dev extra) is not installed")

PEER_SCHEDULE = {"linear": "linear", "cosine": "squaredcos_cap_v2"}
PEER_PREDICTION = {"epsilon": "epsilon", "v": "v_prediction"}
TOL = 1e-5


def pair(kind, schedule="linear", prediction="epsilon", steps=None):
    ours_schedule = NoiseSchedule(schedule, 1000, 1e-4, 0.02, prediction, clip_sample=True)
    ours = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler}[kind](ours_schedule)
    peer_cls = {"ddpm": diffusers.DDPMScheduler, "ddim": diffusers.DDIMScheduler}[kind]
    peer = peer_cls(
        num_train_timesteps=1000,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule=PEER_SCHEDULE[schedule],
        prediction_type=PEER_PREDICTION[prediction],
        clip_sample=True,
    )
    if steps:
        ours.set_timesteps(steps)
        peer.set_timesteps(steps)
    return ours, peer


def inputs(seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_alphas_cumprod_match_diffusers(schedule):
    ours, peer = pair("ddpm", schedule)
    assert torch.allclose(ours.schedule.alphas_cumprod, peer.alphas_cumprod, atol=TOL, rtol=0)
    assert torch.allclose(ours.schedule.betas, peer.betas, atol=TOL, rtol=0)


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
@pytest.mark.parametrize("steps", [50, 1000])
def test_sampling_timesteps_match_diffusers(kind, steps):
    ours, peer = pair(kind, steps=steps)
    assert ours.timesteps.tolist() == peer.timesteps.tolist()


def test_add_noise_matches_diffusers():
    ours, peer = pair("ddpm", "cosine")
    x0, noise = inputs(0)
    t = torch.tensor([17, 733])
    assert torch.allclose(
        ours.add_noise(x0, noise, t), peer.add_noise(x0, noise, t), atol=TOL, rtol=0
    )


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("prediction", ["epsilon", "v"])
@pytest.mark.parametrize("steps", [None, 50])  # all T steps, and strided jumps
def test_ddpm_step_matches_diffusers(schedule, prediction, steps):
    ours, peer = pair("ddpm", schedule, prediction, steps)
    for t in ours.timesteps.tolist()[:: max(len(ours.timesteps) // 6, 1)] + [0]:
        sample, out = inputs(t)
        a = ours.step(out, t, sample, generator=torch.Generator().manual_seed(t))
        b = peer.step(out, t, sample, generator=torch.Generator().manual_seed(t))
        assert torch.allclose(a.prev_sample, b.prev_sample, atol=TOL, rtol=0), t
        assert torch.allclose(a.pred_original_sample, b.pred_original_sample, atol=TOL, rtol=0), t


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("prediction", ["epsilon", "v"])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_step_matches_diffusers(schedule, prediction, eta):
    ours, peer = pair("ddim", schedule, prediction, steps=50)
    for t in ours.timesteps.tolist()[::7] + [0]:
        sample, out = inputs(t)
        a = ours.step(out, t, sample, eta=eta, generator=torch.Generator().manual_seed(t))
        b = peer.step(out, t, sample, eta=eta, generator=torch.Generator().manual_seed(t))
        assert torch.allclose(a.prev_sample, b.prev_sample, atol=TOL, rtol=0), t
        assert torch.allclose(a.pred_original_sample, b.pred_original_sample, atol=TOL, rtol=0), t


def test_a_whole_ddim_trajectory_matches_diffusers():
    """Fifty steps with a fixed stand-in for the network: errors do not accumulate."""
    ours, peer = pair("ddim", "cosine", "epsilon", steps=50)
    x = y = inputs(1)[0]
    for t in ours.timesteps.tolist():
        x = ours.step(torch.tanh(x) * 0.5, t, x).prev_sample
        y = peer.step(torch.tanh(y) * 0.5, t, y).prev_sample
    assert torch.allclose(x, y, atol=TOL, rtol=0)
