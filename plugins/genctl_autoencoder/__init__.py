"""Autoencoder and variational autoencoder (VAE) with a convolutional, spatial latent."""

from __future__ import annotations

import genctl
from genctl.spec import ModelSpec

from .config import AutoencoderConfig, VAEConfig
from .loss import AutoencoderObjective
from .model import Autoencoder, build
from .sampler import AutoencoderSampler, AutoencoderSamplerOptions, VAESampler

__all__ = [
    "Autoencoder",
    "AutoencoderConfig",
    "AutoencoderObjective",
    "AutoencoderSampler",
    "AutoencoderSamplerOptions",
    "VAEConfig",
    "VAESampler",
]


@genctl.hookimpl
def genctl_register_models(registry) -> None:
    common = dict(
        task="unconditional",
        build=build,
        objective=AutoencoderObjective,
        sampler_options=AutoencoderSamplerOptions,
    )
    registry.add(
        ModelSpec(
            name="autoencoder",
            config=AutoencoderConfig,
            sampler=AutoencoderSampler,
            description="Deterministic convolutional autoencoder: reconstructs --input images; "
            "samples from a Gaussian fitted to its training latents",
            paper="https://www.science.org/doi/10.1126/science.1127647",
            **common,
        )
    )
    registry.add(
        ModelSpec(
            name="vae",
            config=VAEConfig,
            sampler=VAESampler,  # also reports the likelihood (negative ELBO)
            description="Variational autoencoder with a spatial latent (encode/decode for latent "
            "models); samples from N(0, I) or reconstructs --input images",
            paper="https://arxiv.org/abs/1312.6114",
            **common,
        )
    )
