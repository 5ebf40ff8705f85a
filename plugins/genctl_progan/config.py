"""The schema of a ProGAN recipe's ``model:`` section."""

from __future__ import annotations

from pydantic import Field, model_validator

from genctl.augment import DiffAugmentPolicy
from genctl.spec import Schema


class ProGANConfig(Schema):
    latent_dim: int = Field(512, gt=0)  # length of z (the paper: 512)
    # Feature maps at resolution r: min(max_channels, channel_base / r). The paper's table
    # (512 up to 32x32, then 256, 128, ... 16 at 1024x1024) is channel_base 16384, max 512.
    channel_base: int = Field(16384, gt=0)
    max_channels: int = Field(512, gt=0)
    start_resolution: int = Field(4, ge=4)  # training starts here and doubles up to data.image_size
    # Growth schedule in training steps: the first resolution trains for `stable_steps`, then each
    # new resolution fades in over `fade_steps` (alpha 0 -> 1) and trains for `stable_steps`. The
    # last resolution trains until train.steps ends.
    fade_steps: int = Field(2000, gt=0)
    stable_steps: int = Field(2000, gt=0)
    n_critic: int = Field(1, gt=0)  # critic steps per generator step (the paper: 1)
    gp_weight: float = Field(10.0, ge=0)  # lambda of the WGAN-GP gradient penalty
    drift_weight: float = Field(0.001, ge=0)  # epsilon_drift: keeps the critic's output near 0
    mbstd_group: int = Field(4, gt=0)  # images per minibatch-stddev group
    # DiffAugment (genctl/augment.py): e.g. "color,translation,cutout", applied to real and fake
    # images before the discriminator in both updates; at the current resolution; "" (off) by default
    diffaugment: DiffAugmentPolicy = ""

    @model_validator(mode="after")
    def _power_of_two_start(self) -> ProGANConfig:
        r = self.start_resolution
        if r & (r - 1):
            raise ValueError(f"start_resolution {r} must be a power of two (4, 8, 16, ...)")
        return self
