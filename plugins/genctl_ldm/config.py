"""The schema of a latent diffusion recipe's ``model:`` section: ddpm's, plus the autoencoder."""

from __future__ import annotations

from genctl_ddpm.config import DDPMConfig
from pydantic import Field

from genctl.errors import BadInput


class LDMConfig(DDPMConfig):
    # the trained autoencoder or VAE run whose latents the UNet learns (a RUN_ID of the same
    # tracking store, or a checkpoint path); frozen, loaded again whenever the model is
    autoencoder: str = Field(min_length=1)
    # latents are not in [-1, 1]: clamping the x_0 estimate to it (ddpm's default) cuts them
    clip_sample: bool = False
    # the UNet's sizes are those of the latent (4 x 7 x 7 for MNIST's spatial VAE)
    attention_resolutions: list[int] = [8]


def check_recipe(recipe) -> None:
    """Rules between the model and the rest of the recipe: bad input, before training."""
    if recipe.data.flip:
        raise BadInput(
            "ldm: data.flip flips the latents, and a flipped latent is not the latent of the "
            "flipped image",
            "Set data.flip=false (the latents are encoded once, from the images as they are).",
        )
