"""The schema of a StyleGAN recipe's ``model:`` section."""

from __future__ import annotations

from pydantic import Field

from genctl.augment import DiffAugmentPolicy
from genctl.spec import Schema


class StyleGANConfig(Schema):
    z_dim: int = Field(512, gt=0)  # length of the input latent z
    w_dim: int = Field(512, gt=0)  # length of the intermediate latent w (the mapping's width)
    mapping_layers: int = Field(8, gt=0)  # depth of the mapping network z -> w (the paper: 8)
    mapping_lr_mul: float = Field(0.01, gt=0)  # the mapping learns 100x slower (the paper)
    # Feature maps at resolution r: min(max_channels, channel_base / r), as in ProGAN.
    channel_base: int = Field(16384, gt=0)
    max_channels: int = Field(512, gt=0)
    style_mixing_prob: float = Field(0.9, ge=0, le=1)  # share of training images with two latents
    w_avg_beta: float = Field(0.995, ge=0, lt=1)  # decay of the running mean of w (truncation)
    r1_gamma: float = Field(10.0, ge=0)  # weight of the R1 penalty on real images (gamma / 2 * R1)
    r1_every: int = Field(1, gt=0)  # lazy R1 (StyleGAN2): every N critic steps, scaled by N
    mbstd_group: int = Field(4, gt=0)  # images per minibatch-stddev group in the discriminator
    # DiffAugment (genctl/augment.py): e.g. "color,translation,cutout", applied to real and fake
    # images before the discriminator in both updates (R1 differentiates through it, at the
    # un-augmented reals, as the paper's StyleGAN2 code does); "" (off) by default
    diffaugment: DiffAugmentPolicy = ""
