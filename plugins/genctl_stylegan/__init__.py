"""StyleGAN: the style-based generator (Karras et al. 2019), as a genctl plugin."""

from __future__ import annotations

import genctl
from genctl.spec import ModelSpec
from genctl_stylegan.config import StyleGANConfig
from genctl_stylegan.loss import build_objective
from genctl_stylegan.model import build
from genctl_stylegan.sampler import StyleGANSamplerOptions, build_sampler


@genctl.hookimpl
def genctl_register_models(registry) -> None:
    registry.add(
        ModelSpec(
            name="stylegan",
            task="unconditional",
            config=StyleGANConfig,
            build=build,
            objective=build_objective,
            sampler=build_sampler,
            sampler_options=StyleGANSamplerOptions,
            description="Style-based generator: mapping network, AdaIN, noise inputs, style mixing, truncation.",
            paper="Karras, Laine, Aila 2019, A Style-Based Generator Architecture for Generative "
            "Adversarial Networks, https://arxiv.org/abs/1812.04948",
        )
    )
