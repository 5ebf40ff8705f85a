"""DCGAN: deep convolutional GAN, with BCE, WGAN and WGAN-GP losses and class conditioning."""

from __future__ import annotations

import genctl
from genctl.spec import ModelSpec

from .config import DCGANConfig
from .loss import DCGANObjective
from .model import build
from .sampler import DCGANSampler, DCGANSamplerOptions


@genctl.hookimpl
def genctl_register_models(registry) -> None:
    registry.add(
        ModelSpec(
            name="dcgan",
            task="unconditional",
            config=DCGANConfig,
            build=build,
            objective=DCGANObjective,
            sampler=DCGANSampler,
            sampler_options=DCGANSamplerOptions,
            description="Deep convolutional GAN; losses bce, wgan, wgan-gp; optional class conditioning",
            paper="https://arxiv.org/abs/1511.06434",
        )
    )
