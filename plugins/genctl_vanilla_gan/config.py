"""The schema of a vanilla GAN recipe's ``model:`` section."""

from __future__ import annotations

from pydantic import Field

from genctl.augment import DiffAugmentPolicy
from genctl.spec import Schema


class VanillaGANConfig(Schema):
    latent_dim: int = Field(64, gt=0)  # length of the noise vector z
    g_hidden: list[int] = Field([128, 256, 512, 1024], min_length=1)  # generator block widths
    d_hidden: list[int] = Field([512, 256, 128], min_length=1)  # discriminator block widths
    conditional: bool = False  # cGAN: one-hot label appended to z and to the flattened image
    # DiffAugment (genctl/augment.py): e.g. "color,translation,cutout", applied to real and fake
    # images before the discriminator in both updates; "" (off) by default
    diffaugment: DiffAugmentPolicy = ""
