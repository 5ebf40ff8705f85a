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


def pair(kind, schedule="linear", prediction="epsilon", steps=None, spacing="leading"):
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
        timestep_spacing=spacing,
    )
    if steps:
        ours.set_timesteps(steps, spacing)
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
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [7, 50, 200, 1000])
def test_sampling_timesteps_match_diffusers(kind, spacing, steps):
    ours, peer = pair(kind, steps=steps, spacing=spacing)
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
@pytest.mark.parametrize(
    ("steps", "spacing"),  # all T steps, and strided jumps in each spacing
    [(None, "leading"), (50, "leading"), (50, "trailing"), (30, "linspace")],
)
def test_ddpm_step_matches_diffusers(schedule, prediction, steps, spacing):
    ours, peer = pair("ddpm", schedule, prediction, steps, spacing)
    for t in ours.timesteps.tolist()[:: max(len(ours.timesteps) // 6, 1)] + [
        ours.timesteps[-1].item()
    ]:
        sample, out = inputs(t)
        a = ours.step(out, t, sample, generator=torch.Generator().manual_seed(t))
        b = peer.step(out, t, sample, generator=torch.Generator().manual_seed(t))
        assert torch.allclose(a.prev_sample, b.prev_sample, atol=TOL, rtol=0), t
        assert torch.allclose(a.pred_original_sample, b.pred_original_sample, atol=TOL, rtol=0), t


# diffusers' DDIMScheduler steps from t to t - T//n whatever the spacing, which for linspace is
# not the next of its own timesteps (genctl steps to the next one), so linspace is left out here.
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("prediction", ["epsilon", "v"])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddim_step_matches_diffusers(schedule, prediction, eta, spacing):
    """genctl re-derives the noise from the clamped x_0: diffusers' use_clipped_model_output."""
    ours, peer = pair("ddim", schedule, prediction, 50, spacing)
    for t in ours.timesteps.tolist()[::7] + [ours.timesteps[-1].item()]:
        sample, out = inputs(t)
        sample = sample * 3  # |x_0| beyond 1 at low t: the clamp and the re-derivation matter
        assert (ours.pred_original_sample(out, t, sample).abs() > 1).any(), t  # it clamps here
        a = ours.step(out, t, sample, eta=eta, generator=torch.Generator().manual_seed(t))
        b = peer.step(
            out,
            t,
            sample,
            eta=eta,
            use_clipped_model_output=True,
            generator=torch.Generator().manual_seed(t),
        )
        assert torch.allclose(a.prev_sample, b.prev_sample, atol=TOL, rtol=0), t
        assert torch.allclose(a.pred_original_sample, b.pred_original_sample, atol=TOL, rtol=0), t


def test_ddim_without_clipped_eps_is_diffusers_default():
    ours, peer = pair("ddim", "linear", "epsilon", steps=50)
    ours.clipped_eps = False
    for t in ours.timesteps.tolist()[::7] + [0]:
        sample, out = inputs(t)
        a = ours.step(out, t, sample * 3).prev_sample
        b = peer.step(out, t, sample * 3).prev_sample
        assert torch.allclose(a, b, atol=TOL, rtol=0), t


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_a_whole_ddim_trajectory_matches_diffusers(spacing):
    """Fifty steps with a fixed stand-in for the network: errors do not accumulate."""
    ours, peer = pair("ddim", "cosine", "epsilon", 50, spacing)
    x = y = inputs(1)[0]
    for t in ours.timesteps.tolist():
        x = ours.step(torch.tanh(x) * 0.5, t, x).prev_sample
        y = peer.step(torch.tanh(y) * 0.5, t, y, use_clipped_model_output=True).prev_sample
    assert torch.allclose(x, y, atol=TOL, rtol=0)
