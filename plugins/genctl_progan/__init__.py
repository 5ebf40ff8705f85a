"""ProGAN: progressive growing of GANs (Karras et al. 2018), as a genctl plugin."""

from __future__ import annotations

import genctl
from genctl.spec import ModelSpec
from genctl_progan.config import ProGANConfig
from genctl_progan.loss import build_objective, check_recipe
from genctl_progan.model import build
from genctl_progan.sampler import ProGANSamplerOptions, build_sampler


@genctl.hookimpl
def genctl_register_models(registry) -> None:
    registry.add(
        ModelSpec(
            name="progan",
            task="unconditional",
            config=ProGANConfig,
            build=build,
            objective=build_objective,
            sampler=build_sampler,
            sampler_options=ProGANSamplerOptions,
            check_recipe=check_recipe,
            description="Progressive growing GAN: resolution doubles during training, new layers fade in.",
            paper="Karras et al. 2018, Progressive Growing of GANs for Improved Quality, Stability, "
            "and Variation, https://arxiv.org/abs/1710.10196",
        )
    )
