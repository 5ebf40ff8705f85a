"""Vanilla GAN: the multilayer-perceptron GAN of Goodfellow et al., optionally class-conditional."""

from __future__ import annotations

import genctl
from genctl.spec import ModelSpec

from .config import VanillaGANConfig
from .loss import VanillaGANObjective
from .model import build
from .sampler import VanillaGANSampler, VanillaGANSamplerOptions


@genctl.hookimpl
def genctl_register_models(registry) -> None:
    registry.add(
        ModelSpec(
            name="vanilla_gan",
            task="unconditional",
            config=VanillaGANConfig,
            build=build,
            objective=VanillaGANObjective,
            sampler=VanillaGANSampler,
            sampler_options=VanillaGANSamplerOptions,
            description="MLP GAN (Linear/BatchNorm/ReLU generator, Linear/LeakyReLU discriminator)",
            paper="https://arxiv.org/abs/1406.2661",
        )
    )
