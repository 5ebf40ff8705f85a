"""SRGAN: x4 photo-realistic super-resolution with a perceptual loss (Ledig et al. 2017)."""

from __future__ import annotations

import genctl
from genctl.spec import ModelSpec

from .config import SRGANConfig
from .loss import SRGANObjective
from .model import build_networks
from .sampler import SRGANSampler, SRGANSamplerOptions


@genctl.hookimpl
def genctl_register_models(registry) -> None:
    registry.add(
        ModelSpec(
            name="srgan",
            task="super_resolution",
            config=SRGANConfig,
            build=build_networks,
            objective=SRGANObjective,
            sampler=SRGANSampler,
            sampler_options=SRGANSamplerOptions,
            takes_input=True,
            description="Super-resolution (x4): SRResNet generator, VGG-19 content + adversarial loss.",
            paper="Ledig et al. 2017, Photo-Realistic Single Image Super-Resolution Using a "
            "Generative Adversarial Network, https://arxiv.org/abs/1609.04802",
        )
    )
