"""ddpm sampling's speed options: torch.inference_mode (same images, bitwise), channels-last
inputs, bf16 autocast on CUDA only; guidance by a loss keeps its autograd."""

from __future__ import annotations

import pytest
import torch
from genctl_ddpm.config import DDPMConfig
from genctl_ddpm.model import build_networks
from genctl_ddpm.sampler import DDPMSampleOptions, DiffusionSampler

from genctl.errors import BadInput
from genctl.spec import DataInfo
from tests.plugins.test_ddpm import DIGITS, RGB, TINY, single_thread  # noqa: F401 (autouse)


def make(info: DataInfo = RGB, **overrides):
    torch.manual_seed(0)
    config = DDPMConfig(**{**TINY, **overrides, "conditional": info.num_classes > 0})
    nets = build_networks(config, info)
    return DiffusionSampler(config, nets, info)


def draw(sampler, n=3, seed=0, labels=None, **options):
    opts = DDPMSampleOptions.model_validate(options)
    return sampler.sample(n, opts, torch.Generator().manual_seed(seed), labels=labels)


def watch(sampler) -> list[dict]:
    """What the UNet saw at each call: inference mode, grad mode, autocast, input layout."""
    seen = []

    def hook(module, args):
        x = args[0]
        seen.append(
            {
                "inference": torch.is_inference_mode_enabled(),
                "grad": torch.is_grad_enabled(),
                "channels_last": x.is_contiguous(memory_format=torch.channels_last)
                and not x.is_contiguous(),
            }
        )

    sampler.unet.register_forward_pre_hook(hook)
    return seen


@pytest.mark.parametrize(
    ("info", "options"),
    [
        (RGB, {"method": "ddim", "steps": 6}),
        (RGB, {"method": "ddpm", "steps": 6}),
        (RGB, {"method": "dpmpp_2m", "steps": 6}),
        (DIGITS, {"method": "ddim", "steps": 6, "guidance": 3.0}),  # batched CFG
    ],
)
def test_inference_mode_draws_the_same_images_bitwise(info, options):
    sampler = make(info)
    seen = watch(sampler)
    labels = torch.arange(3) if info.num_classes else None
    fast = draw(sampler, labels=labels, **options)
    assert seen and all(s["inference"] for s in seen)  # the UNet ran under inference_mode
    sampler.inference_mode = False  # the no_grad path of before
    seen.clear()
    before = draw(sampler, labels=labels, **options)
    assert seen and not any(s["inference"] or s["grad"] for s in seen)
    assert torch.equal(fast, before)
    assert not fast.is_inference() and fast.is_contiguous()
    fast.mul_(2)  # callers may change the images in place


def test_guidance_by_a_loss_keeps_autograd_after_an_unguided_draw():
    sampler = make()
    seen = watch(sampler)
    plain = draw(sampler, n=2, steps=4)
    seen.clear()
    guided = draw(sampler, n=2, steps=4, guide="color", color=[1.0, 0.0, 0.0], guide_scale=20.0)
    assert seen and all(s["grad"] and not s["inference"] for s in seen)
    assert not torch.allclose(plain, guided, atol=1e-3)  # the guide's gradient moved them


def test_channels_last_feeds_the_unet_nhwc_and_draws_the_same_images_up_to_rounding():
    sampler = make()
    seen = watch(sampler)
    default = draw(sampler, steps=5)
    assert not any(s["channels_last"] for s in seen)
    seen.clear()
    nhwc = draw(sampler, steps=5, channels_last=True)
    assert seen and all(s["channels_last"] for s in seen)
    assert nhwc.is_contiguous()  # returned in the default layout
    torch.testing.assert_close(nhwc, default, rtol=0, atol=1e-4)


def test_bf16_on_cpu_is_bad_input():
    with pytest.raises(BadInput, match="precision=bf16 autocasts the UNet on CUDA only"):
        draw(make(), precision="bf16")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 autocast is for CUDA")
def test_bf16_on_cuda_draws_close_to_fp32():
    sampler = make()
    sampler.unet.cuda()
    fp32 = draw(sampler, steps=5)
    bf16 = draw(sampler, steps=5, precision="bf16")
    assert bf16.dtype == torch.float32
    assert (bf16 - fp32).abs().mean() < 0.05
