"""Latent diffusion (Rombach et al. 2022): the ddpm family's UNet, schedules and samplers on the
latents of a trained, frozen autoencoder or VAE run. See README.md in this folder."""

from __future__ import annotations

import genctl
from genctl.spec import ModelSpec


@genctl.hookimpl
def genctl_register_models(registry) -> None:
    from genctl_ddpm.sampler import DDPMSampleOptions

    from genctl_ldm.config import LDMConfig, check_recipe
    from genctl_ldm.loss import LatentDiffusionObjective
    from genctl_ldm.model import build
    from genctl_ldm.sampler import LatentDiffusionSampler

    registry.add(
        ModelSpec(
            name="ldm",
            task="unconditional",  # labels, when the data has them, feed model.conditional
            config=LDMConfig,
            build=build,
            objective=LatentDiffusionObjective,
            sampler=LatentDiffusionSampler,
            sampler_options=DDPMSampleOptions,  # ddpm's: method, steps, guidance, strength, ...
            takes_input=False,  # img2img inputs are optional: used when --input is given
            check_recipe=check_recipe,
            description="Latent diffusion: DDPM/DDIM on the latents of a frozen autoencoder/VAE "
            "run (model.autoencoder); class-conditional with classifier-free guidance; img2img",
            paper="Rombach et al. 2022, https://arxiv.org/abs/2112.10752",
        )
    )
