"""Cross-check with a peer: genctl_ddpm's sigma-space solvers (Euler, Euler ancestral, Heun,
DPM-Solver++ 2M, UniPC) against diffusers' scheduler of the same name, step by step.

Both sides get the same timesteps and noise levels and, at every network call, the same stand-in
network's output; the sample each side hands the network must agree at every call, to 1e-4.
diffusers keeps Euler's, Euler ancestral's and Heun's samples in sigma space
(``y = x_t sqrt(1 + sigma^2)``, scaled back by ``scale_model_input``); genctl keeps ``x_t``
throughout, so the two are compared where the network sees them. (The samples are about 1;
diffusers' sigma-space ones start 157 times larger, where float32 keeps about 1e-5 of the
difference ``y - sigma eps``, so the two roundings differ by up to 4e-5.)
"""

from __future__ import annotations

import math

import pytest
import torch
from genctl_ddpm.scheduler import (
    SCHEDULERS,
    DDIMScheduler,
    EulerScheduler,
    HeunScheduler,
    NoiseSchedule,
    karras_sigmas,
    rescale_zero_terminal_snr,
)

diffusers = pytest.importorskip("diffusers", reason="diffusers (the dev extra) is not installed")

PEER = {
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "dpmpp_2m_sde": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
}
SIGMA_SPACE = {"euler", "euler_a", "heun"}  # diffusers' sample is y, not x_t
CLIPS = {"heun", "dpmpp_2m", "dpmpp_2m_sde", "unipc"}  # diffusers can clamp x_0 to [-1, 1] in these
T = 1000
TOL = 1e-4


def pair(
    method,
    prediction="epsilon",
    schedule="linear",
    clip=False,
    steps=10,
    spacing="trailing",
    sigmas=None,
    zero_snr=False,
):
    """genctl's scheduler and diffusers', set to the same timesteps and noise levels."""
    ours = SCHEDULERS[method](
        NoiseSchedule(
            schedule, T, 1e-4, 0.02, prediction, clip_sample=clip, zero_terminal_snr=zero_snr
        )
    )
    ours.set_timesteps(steps, spacing, sigmas)
    config = dict(
        num_train_timesteps=T,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule={"linear": "linear", "cosine": "squaredcos_cap_v2"}[schedule],
        prediction_type={"epsilon": "epsilon", "v": "v_prediction"}[prediction],
    )
    if zero_snr and method == "heun":  # no such option: its betas, and 2^-24 as the others do
        config.update(trained_betas=ours.schedule.betas.tolist())
    elif zero_snr:
        config.update(rescale_betas_zero_snr=True)
    if method == "heun":
        config.update(clip_sample=clip, clip_sample_range=1.0)
    elif clip:  # dynamic thresholding with s capped at 1 is a clamp to [-1, 1]
        config.update(thresholding=True, sample_max_value=1.0)
    if method == "unipc":
        config.update(solver_type="bh2", solver_order=2)
    if method in {"dpmpp_2m", "dpmpp_2m_sde"}:
        algorithm = "sde-dpmsolver++" if method == "dpmpp_2m_sde" else "dpmsolver++"
        config.update(algorithm_type=algorithm, solver_order=2, solver_type="midpoint")
    peer_class = getattr(diffusers, PEER[method])
    if zero_snr and method == "heun":
        peer_class = _heun_at_2_24
    if sigmas == "karras":
        # Euler's and Heun's karras levels run between their spaced timesteps' levels: linspace
        # spans T-1 to 0, as genctl's and the multistep solvers' karras levels always do
        if method != "euler_a":  # which has no karras option (its levels are set below)
            config.update(use_karras_sigmas=True)
        peer = peer_class(**config, timestep_spacing="linspace")
        peer.set_timesteps(steps)
    elif spacing == "trailing":  # the one spacing all five define as genctl does
        peer = peer_class(**config, timestep_spacing="trailing")
        peer.set_timesteps(steps)
    elif method in {"euler", "heun", "dpmpp_2m", "dpmpp_2m_sde"}:  # they take custom timesteps
        peer = peer_class(**config)
        peer.set_timesteps(timesteps=ours.level_timesteps.long().tolist())
    else:  # the others space leading and linspace differently: give them genctl's levels
        peer = peer_class(**config)
        peer.set_timesteps(steps)
        peer.timesteps = ours.level_timesteps.to(peer.timesteps.dtype)
        peer.sigmas = ours.sigmas.clone()
    if method == "euler_a" and sigmas == "karras":  # diffusers' has no karras option
        peer.timesteps = ours.level_timesteps.clone()
        peer.sigmas = ours.sigmas.clone()
    return ours, peer


def _heun_at_2_24(**config):
    peer = diffusers.HeunDiscreteScheduler(**config)
    peer.alphas_cumprod[-1] = 2.0**-24
    return peer


def stand_in_network(x, t, prediction, table, reach=0.9):
    """A deterministic 'network' whose x_0 estimate is a fixed image plus a nonlinear wobble
    (the wobble makes a multistep solver's extrapolation matter: a perfect network's x_0 is the
    same at every level, and any coefficients give the same answer)."""
    g = torch.Generator().manual_seed(99)
    x0_ref = (torch.rand(x.shape, generator=g) * 2 - 1) * reach
    i = min(int(t), len(table) - 2)  # the level of fractional t, log-linear like sigma_to_t
    w = float(t) - i
    log_s = (1 - w) * math.log(table[i]) + w * math.log(table[i + 1])
    s = math.exp(log_s)
    alpha, sigma = 1 / math.sqrt(1 + s * s), s / math.sqrt(1 + s * s)
    eps = (x - alpha * x0_ref) / sigma + 0.3 * torch.tanh(3 * x)
    return eps if prediction == "epsilon" else alpha * eps - sigma * x0_ref


def run_both(ours, peer, method, prediction, reach=0.9):
    """The two trajectories from the same start, one network output each call; the samples
    the network sees are compared at every call, then the results."""
    table = ours.sigma_table.double().tolist()
    x = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    s0 = peer.sigmas[0].double()
    y = (x.double() * (1 + s0**2).sqrt()).float() if method in SIGMA_SPACE else x.clone()
    assert len(ours.timesteps) == len(peer.timesteps)
    for k, (t_ours, t_peer) in enumerate(
        zip(ours.timesteps.tolist(), peer.timesteps.tolist(), strict=True)
    ):
        # the multistep solvers round karras levels' timesteps for the network; genctl does not
        rounded = method in {"dpmpp_2m", "dpmpp_2m_sde", "unipc"}
        assert (round(t_ours) if rounded else t_ours) == pytest.approx(t_peer, abs=1e-3), k
        seen = peer.scale_model_input(y, peer.timesteps[k])
        assert torch.allclose(x, seen, atol=TOL, rtol=TOL), (k, (x - seen).abs().max())
        out = stand_in_network(x, t_ours, prediction, table, reach)
        noisy = method in {"euler_a", "dpmpp_2m_sde"}
        kw = {"generator": torch.Generator().manual_seed(k)} if noisy else {}
        x = ours.step(out, t_ours, x, generator=torch.Generator().manual_seed(k)).prev_sample
        y = peer.step(out, peer.timesteps[k], y, **kw).prev_sample
    assert torch.allclose(x, y, atol=TOL, rtol=TOL), (x - y).abs().max()
    return x


# ---------------------------------------------------------------- levels and timesteps


@pytest.mark.parametrize("method", list(PEER))
@pytest.mark.parametrize("steps", [1, 7, 25])
def test_trailing_levels_and_timesteps_match_diffusers(method, steps):
    ours, peer = pair(method, steps=steps)
    assert ours.timesteps.tolist() == peer.timesteps.float().tolist()
    peer_levels = (
        peer.sigmas if method != "heun" else torch.cat([peer.sigmas[::2], peer.sigmas[-1:]])
    )
    assert torch.allclose(ours.sigmas, peer_levels.float(), rtol=TOL, atol=0)


@pytest.mark.parametrize("method", ["euler", "heun", "dpmpp_2m", "dpmpp_2m_sde", "unipc"])
def test_karras_levels_match_diffusers(method):
    ours, peer = pair(method, sigmas="karras", steps=12)
    levels = ours.sigmas[:-1]
    assert levels[0] == pytest.approx(ours.sigma_table[-1].item(), rel=1e-5)  # sigma(T-1)
    assert levels[-1] == pytest.approx(ours.sigma_table[0].item(), rel=1e-5)  # sigma(0)
    peer_levels = (
        peer.sigmas if method != "heun" else torch.cat([peer.sigmas[::2], peer.sigmas[-1:]])
    )
    assert torch.allclose(ours.sigmas, peer_levels.float(), rtol=1e-5, atol=0)
    peer_t = peer.timesteps.double()
    ours_t = ours.timesteps.double()
    if method in {
        "dpmpp_2m",
        "dpmpp_2m_sde",
        "unipc",
    }:  # they round the network's timesteps; genctl does not
        ours_t = ours_t.round()
    assert torch.allclose(ours_t, peer_t, atol=1e-3, rtol=0)


def test_karras_levels_are_evenly_spaced_in_the_seventh_root():
    levels = karras_sigmas(80.0, 0.002, 6)
    gaps = levels ** (1 / 7)
    assert torch.allclose(gaps[:-1] - gaps[1:], (gaps[0] - gaps[1]).expand(5), atol=1e-12)
    assert (levels[0].item(), levels[-1].item()) == pytest.approx((80.0, 0.002))


# ---------------------------------------------------------------- trajectories


@pytest.mark.parametrize("method", list(PEER))
@pytest.mark.parametrize("prediction", ["epsilon", "v"])
@pytest.mark.parametrize(
    ("spacing", "sigmas", "steps"),
    [
        ("trailing", None, 10),
        ("leading", None, 8),
        ("linspace", None, 6),
        ("trailing", "karras", 10),
    ],
)
def test_a_whole_trajectory_matches_diffusers(method, prediction, spacing, sigmas, steps):
    ours, peer = pair(method, prediction, steps=steps, spacing=spacing, sigmas=sigmas)
    run_both(ours, peer, method, prediction)


@pytest.mark.parametrize("method", sorted(CLIPS))
@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_with_x0_clamped_the_trajectory_matches_diffusers_clamping(method, prediction):
    """genctl clamps the x_0 estimate with the model's clip_sample: diffusers' Heun clip_sample,
    its multistep solvers' thresholding at 1 (Euler and Euler ancestral have no clamp there)."""
    ours, peer = pair(method, prediction, clip=True, steps=10)
    x = run_both(ours, peer, method, prediction, reach=1.5)  # x_0 beyond [-1, 1]: it clamps
    unclamped, _ = pair(method, prediction, clip=False, steps=10)
    assert not torch.allclose(x, run_both_ours(unclamped, prediction, 1.5), atol=1e-2)


def run_both_ours(ours, prediction, reach):
    table = ours.sigma_table.double().tolist()
    x = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    for t in ours.timesteps.tolist():
        x = ours.step(stand_in_network(x, t, prediction, table, reach), t, x).prev_sample
    return x


@pytest.mark.parametrize("method", list(PEER))
def test_zero_terminal_snr_schedules_match_diffusers(method):
    """abar is 0 at T-1; both take its level at abar = 2^-24 (sigma 4096)."""
    ours, peer = pair(method, "v", steps=10, zero_snr=True)
    assert ours.sigmas[0].item() == pytest.approx(4096.0, rel=1e-4)
    run_both(ours, peer, method, "v")


def test_zero_terminal_snr_rescaling_matches_diffusers():
    ours = NoiseSchedule("linear", T, zero_terminal_snr=True)
    peer = diffusers.DDIMScheduler(beta_schedule="linear", rescale_betas_zero_snr=True)
    assert ours.alphas_cumprod[-1].item() == 0.0
    assert torch.allclose(ours.alphas_cumprod, peer.alphas_cumprod, atol=1e-6, rtol=0)
    # the first level keeps its signal: only the end moves
    plain = NoiseSchedule("linear", T)
    assert ours.alphas_cumprod[0].item() == pytest.approx(plain.alphas_cumprod[0].item())
    betas = rescale_zero_terminal_snr(torch.linspace(1e-4, 0.02, T, dtype=torch.float64))
    assert betas[-1].item() == pytest.approx(1.0)


def test_img2img_start_matches_diffusers_begin_index():
    """Starting at a later level (img2img): the noised input and the rest of the trajectory."""
    for method in PEER:
        ours, peer = pair(method, steps=10)
        left = ours.set_begin_index(4)
        peer.set_begin_index(4 * ours.calls_per_step)
        assert left == peer.timesteps[4 * ours.calls_per_step :].float().tolist()
        x0 = torch.rand(2, 1, 6, 6) * 2 - 1
        noise = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(3))
        x = ours.add_noise(x0, noise, torch.full((2,), left[0]))
        s = ours.sigmas[4]
        assert torch.allclose(x * (1 + s**2).sqrt(), x0 + s * noise, atol=TOL)


# ---------------------------------------------------------------- properties of their own


def test_euler_at_ddims_levels_is_ddim_at_eta_zero():
    """Euler in sigma space is DDIM's deterministic update (Karras et al. 2022, sec. 3), clamp
    and re-derived noise included."""
    schedule = NoiseSchedule("linear", T, prediction="epsilon", clip_sample=True)
    euler, ddim = EulerScheduler(schedule), DDIMScheduler(schedule)
    euler.set_timesteps(20, "trailing")
    ddim.set_timesteps(20, "trailing")
    x = y = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    table = euler.sigma_table.double().tolist()
    for t in ddim.timesteps.tolist():
        x = euler.step(stand_in_network(x, t, "epsilon", table), float(t), x).prev_sample
        y = ddim.step(stand_in_network(y, t, "epsilon", table), t, y, eta=0.0).prev_sample
    assert torch.allclose(x, y, atol=1e-4)


def test_euler_ancestral_at_ddpms_levels_is_ddpm():
    """Euler ancestral's step, mean ``x_0 + (sigma_next / sigma)^2 (y - x_0)`` and noise
    ``sigma_up``, is DDPM's posterior q(x_prev | x_t, x_0) in sigma space: with the same noise
    the two give the same images (and DDIM at eta 1 too)."""
    schedule = NoiseSchedule("linear", T, prediction="epsilon", clip_sample=True)
    euler_a, ddpm = SCHEDULERS["euler_a"](schedule), SCHEDULERS["ddpm"](schedule)
    euler_a.set_timesteps(20, "trailing")
    ddpm.set_timesteps(20, "trailing")
    x = y = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    table = euler_a.sigma_table.double().tolist()
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for t in ddpm.timesteps.tolist():
        x = euler_a.step(stand_in_network(x, t, "epsilon", table), float(t), x, g1).prev_sample
        y = ddpm.step(stand_in_network(y, t, "epsilon", table), t, y, g2).prev_sample
    assert torch.allclose(x, y, atol=1e-4)


def test_heun_calls_the_network_twice_per_step_but_once_on_the_last():
    heun = HeunScheduler(NoiseSchedule("linear", T))
    heun.set_timesteps(10, "trailing")
    assert len(heun.timesteps) == 19
    assert len(heun.set_begin_index(6)) == 7  # from level 6: levels 6..9, 2 x 3 + 1 calls


@pytest.mark.parametrize("method", list(PEER))
def test_a_perfect_network_gives_back_its_image(method):
    """With the true noise at every level, every solver ends on the image."""
    schedule = NoiseSchedule("cosine", T, clip_sample=False)
    s = SCHEDULERS[method](schedule)
    s.set_timesteps(8, "trailing")
    x0 = torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(1)) * 1.6 - 0.8
    noise = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(2))
    x = s.add_noise(x0, noise, torch.full((2,), s.timesteps[0].item()))
    for t in s.timesteps.tolist():
        level = s.sigmas[s._level()]
        eps = (x * (1 + level**2).sqrt() - x0) / level
        x = s.step(eps, t, x, generator=torch.Generator().manual_seed(0)).prev_sample
    assert torch.allclose(x, x0, atol=1e-4)  # euler_a too: its fresh noise is then the truth
