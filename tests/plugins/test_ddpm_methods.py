"""The diffusion sampler's solver methods (dpmpp_2m, unipc, euler, euler_a, heun) through
``DiffusionSampler.sample``: network calls, determinism, v prediction, classifier-free guidance,
guidance functions, img2img, karras levels and the options that do not fit together.
(Their step-by-step agreement with diffusers is in ``test_ddpm_solvers.py``.)"""

from __future__ import annotations

import pytest
import torch
from genctl_ddpm.sampler import DDPMSampleOptions, network_calls
from pydantic import ValidationError

from genctl.errors import BadInput
from tests.plugins.test_ddpm import DIGITS, draw, make

SOLVERS = ["dpmpp_2m", "dpmpp_2m_sde", "unipc", "euler", "euler_a", "heun"]


@pytest.fixture(autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def calls_made(sampler, nets, **options) -> list[float]:
    seen: list[float] = []
    handle = nets["unet"].register_forward_pre_hook(
        lambda mod, args: seen.append(float(args[1][0]))
    )
    try:
        draw(sampler, n=1, **options)
    finally:
        handle.remove()
    return seen


@pytest.mark.parametrize("method", SOLVERS)
def test_each_method_makes_the_network_calls_it_says(method):
    _, nets, sampler = make()
    seen = calls_made(sampler, nets, method=method, steps=6)
    assert len(seen) == network_calls(method, 6) == (11 if method == "heun" else 6)
    assert seen[0] == 99 and seen == sorted(seen, reverse=True)  # from T-1 down


@pytest.mark.parametrize("method", SOLVERS)
def test_default_steps_are_the_documented_ones(method):
    _, nets, sampler = make()
    want = {"heun": 10}.get(method, 20)
    assert len(calls_made(sampler, nets, method=method)) == network_calls(method, want)


@pytest.mark.parametrize("method", SOLVERS)
@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_each_method_samples_images_the_seed_decides(method, prediction):
    _, _, sampler = make(prediction=prediction)
    a = draw(sampler, n=2, seed=3, method=method, steps=5)
    assert a.shape == (2, 3, 8, 8) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, draw(sampler, n=2, seed=3, method=method, steps=5))
    assert not torch.allclose(a, draw(sampler, n=2, seed=4, method=method, steps=5))


@pytest.mark.parametrize("method", ["euler_a", "dpmpp_2m_sde"])
def test_a_list_of_generators_gives_what_one_call_per_image_gives(method):
    _, _, sampler = make()
    opts = DDPMSampleOptions(method=method, steps=4)
    gens = [torch.Generator().manual_seed(s) for s in (5, 6)]
    together = sampler.sample(2, opts, gens)
    apart = [sampler.sample(1, opts, [torch.Generator().manual_seed(s)]) for s in (5, 6)]
    assert torch.allclose(together, torch.cat(apart), atol=1e-5)


def test_karras_levels_put_more_calls_at_low_noise():
    _, nets, sampler = make()
    plain = calls_made(sampler, nets, method="euler", steps=8)
    karras = calls_made(sampler, nets, method="euler", steps=8, sigmas="karras")
    assert karras[0] == 99 and karras[-1] == pytest.approx(0.0, abs=1e-6)
    assert sum(t < 30 for t in karras) > sum(t < 30 for t in plain)


@pytest.mark.parametrize("method", SOLVERS)
def test_guidance_zero_is_the_unconditional_model(method):
    _, _, sampler = make(DIGITS, conditional=True)
    unconditional = draw(sampler, steps=4, method=method)
    guided0 = draw(sampler, steps=4, method=method, **{"class": 3, "guidance": 0.0})
    assert torch.allclose(guided0, unconditional, atol=1e-5)
    guided3 = draw(sampler, steps=4, method=method, **{"class": 3, "guidance": 3.0})
    assert not torch.allclose(guided3, unconditional, atol=1e-3)


@pytest.mark.parametrize("method", ["dpmpp_2m", "heun"])
def test_color_guidance_moves_the_colour_with_a_solver(method):
    _, _, sampler = make()
    target = torch.tensor([1.0, 0.0, 0.0])
    plain = draw(sampler, n=4, steps=8, method=method)
    guided = draw(
        sampler, n=4, steps=8, method=method, guide="color", color=[1.0, 0.0, 0.0], guide_scale=20.0
    )
    assert (guided.mean((0, 2, 3)) - target).abs().sum() < 0.5 * (
        plain.mean((0, 2, 3)) - target
    ).abs().sum()


@pytest.mark.parametrize("method", SOLVERS)
def test_img2img_with_a_solver_follows_its_strength(method):
    _, _, sampler = make()
    inputs = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    target = (inputs + 1) / 2
    assert torch.equal(draw(sampler, inputs=inputs, strength=0.0, method=method), target)
    low = draw(sampler, inputs=inputs, strength=0.1, steps=20, method=method)
    high = draw(sampler, inputs=inputs, strength=0.9, steps=20, method=method)
    assert (low - target).abs().mean() < 0.5 * (high - target).abs().mean()


def test_img2img_with_karras_levels_starts_at_a_level_of_its_own():
    _, nets, sampler = make()
    seen: list[float] = []
    nets["unet"].register_forward_pre_hook(lambda mod, args: seen.append(float(args[1][0])))
    draw(
        sampler,
        inputs=torch.zeros(1, 3, 8, 8),
        strength=0.5,
        steps=10,
        method="heun",
        sigmas="karras",
    )
    assert len(seen) == 2 * 5 - 1 and seen[0] < 99  # the last 5 of 10 levels


def test_methods_and_sigmas_are_validated_by_the_schema():
    assert (
        DDPMSampleOptions.model_validate({"method": "heun", "sigmas": "karras"}).sigmas == "karras"
    )
    with pytest.raises(ValidationError, match="dpmpp_2m"):
        DDPMSampleOptions.model_validate({"method": "dpm++"})
    with pytest.raises(ValidationError, match="karras"):
        DDPMSampleOptions.model_validate({"sigmas": "exponential"})


@pytest.mark.parametrize(
    ("model", "options", "message"),
    [
        ({}, {"method": "euler", "eta": 0.5}, "eta applies to method=ddim only"),
        ({}, {"method": "ddim", "sigmas": "karras"}, "sigmas=karras applies to the methods"),
        ({}, {"method": "ddpm", "sigmas": "karras"}, "sigmas=karras applies to the methods"),
        (
            {},
            {"method": "euler", "sigmas": "karras", "spacing": "leading"},
            "spacing does not apply",
        ),
        (
            {"prediction": "v", "zero_terminal_snr": True},
            {"method": "dpmpp_2m", "spacing": "leading"},
            "zero-terminal-SNR",
        ),
    ],
)
def test_options_that_do_not_fit_together_are_bad_input(model, options, message):
    _, _, sampler = make(**model)
    with pytest.raises(BadInput, match=message):
        draw(sampler, **{"steps": 2, **options})


def test_the_bad_input_message_is_one_line():
    _, _, sampler = make()
    with pytest.raises(BadInput) as err:
        draw(sampler, method="ddim", sigmas="karras")
    assert "\n" not in str(err.value.args[0])


@pytest.mark.parametrize("method", ["ddim", "ddpm", *SOLVERS])
def test_a_zero_terminal_snr_model_samples_with_every_method(method):
    _, _, sampler = make(prediction="v", zero_terminal_snr=True)
    assert sampler.schedule.alphas_cumprod[-1].item() == 0.0
    x = draw(sampler, n=2, steps=4, method=method)
    assert torch.isfinite(x).all() and x.min() >= 0 and x.max() <= 1
