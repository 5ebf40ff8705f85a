"""DDPM / DDIM diffusion on a UNet, with class conditioning, classifier-free guidance, guidance
by a loss and img2img. See README.md in this folder."""

from __future__ import annotations

import genctl
from genctl.spec import ModelSpec


@genctl.hookimpl
def genctl_register_models(registry) -> None:
    from genctl_ddpm.config import DDPMConfig
    from genctl_ddpm.loss import DiffusionObjective
    from genctl_ddpm.model import build_networks
    from genctl_ddpm.sampler import DDPMSampleOptions, DiffusionSampler

    registry.add(
        ModelSpec(
            name="ddpm",
            task="unconditional",  # labels, when the data has them, feed model.conditional
            config=DDPMConfig,
            build=build_networks,
            objective=DiffusionObjective,
            sampler=DiffusionSampler,
            sampler_options=DDPMSampleOptions,
            takes_input=False,  # img2img inputs are optional: used when --input is given
            description="Denoising diffusion (DDPM/DDIM) on a UNet; class-conditional with "
            "classifier-free guidance; guidance by a loss; img2img",
            paper="Ho et al. 2020, https://arxiv.org/abs/2006.11239; Song et al. 2021 (DDIM), "
            "https://arxiv.org/abs/2010.02502; Ho & Salimans 2022 (CFG), https://arxiv.org/abs/2207.12598",
        )
    )
