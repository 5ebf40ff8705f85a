"""CycleGAN: unpaired image-to-image translation with cycle consistency (Zhu et al. 2017)."""

from __future__ import annotations

import genctl
from genctl.spec import ModelSpec

from .config import CycleGANConfig
from .loss import CycleGANObjective
from .model import build_networks
from .sampler import CycleGANSampler, CycleGANSamplerOptions


@genctl.hookimpl
def genctl_register_models(registry) -> None:
    registry.add(
        ModelSpec(
            name="cyclegan",
            task="unpaired",
            config=CycleGANConfig,
            build=build_networks,
            objective=CycleGANObjective,
            sampler=CycleGANSampler,
            sampler_options=CycleGANSamplerOptions,
            takes_input=True,
            description="Unpaired translation between two image domains (horse <-> zebra).",
            paper="Zhu et al. 2017, Unpaired Image-to-Image Translation using Cycle-Consistent "
            "Adversarial Networks, https://arxiv.org/abs/1703.10593",
        )
    )
