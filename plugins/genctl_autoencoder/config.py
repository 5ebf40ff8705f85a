"""The schemas of the ``model:`` section of autoencoder and VAE recipes."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt

from genctl.spec import Schema


class AutoencoderConfig(Schema):
    """The deterministic autoencoder: x -> z -> x_hat, trained on reconstruction alone."""

    width: int = Field(32, gt=0)  # channels of the first encoder level (the last decoder level)
    channel_mults: list[PositiveInt] = Field(
        [1, 2], min_length=1
    )  # width per level; each level halves H, W
    latent_channels: int = Field(4, gt=0)  # z is latent_channels x H/2^L x W/2^L (L levels)
    latent: Literal["spatial", "vector"] = "spatial"  # vector: z is latent_channels x 1 x 1
    recon: Literal["bce", "mse"] = "mse"  # bce: Bernoulli decoder, for [0, 1]-ish data (MNIST)
    decoder_std: float = Field(0.1, gt=0)  # mse: sigma of the Gaussian decoder, on the [0, 1] scale


class VAEConfig(AutoencoderConfig):
    """The variational autoencoder: the same networks, an encoder that outputs (mu, logvar)."""

    beta: float = Field(1.0, ge=0)  # weight of the KL term: 1 is the ELBO, >1 beta-VAE
    kl_warmup_steps: int = Field(0, ge=0)  # beta ramps linearly from 0 over these steps
