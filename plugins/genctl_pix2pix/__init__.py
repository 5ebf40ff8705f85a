"""Pix2Pix: paired image-to-image translation with a conditional GAN (Isola et al. 2017)."""

from __future__ import annotations

import genctl
from genctl.spec import ModelSpec

from .config import Pix2PixConfig
from .loss import Pix2PixObjective
from .model import build_networks
from .sampler import Pix2PixSampler


@genctl.hookimpl
def genctl_register_models(registry) -> None:
    registry.add(
        ModelSpec(
            name="pix2pix",
            task="paired",
            config=Pix2PixConfig,
            build=build_networks,
            objective=Pix2PixObjective,
            sampler=Pix2PixSampler,
            takes_input=True,
            description="Paired translation (label maps -> photos): U-Net + PatchGAN, GAN + L1 loss.",
            paper="Isola et al. 2017, Image-to-Image Translation with Conditional Adversarial "
            "Networks, https://arxiv.org/abs/1611.07004",
        )
    )
