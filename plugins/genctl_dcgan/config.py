"""The schema of a DCGAN recipe's ``model:`` section."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from genctl.augment import DiffAugmentPolicy
from genctl.spec import Schema

Loss = Literal["bce", "wgan", "wgan-gp"]
Norm = Literal["batch", "instance", "layer", "none"]


class DCGANConfig(Schema):
    latent_dim: int = Field(100, gt=0)  # length of the noise vector z
    # Channels next to the image (G's last hidden map, D's first), doubled each time the map halves.
    g_width: int = Field(64, gt=0)
    d_width: int = Field(64, gt=0)
    max_width: int = Field(1024, gt=0)  # cap on the doubling, for large images
    # bce: non-saturating GAN; wgan: weight clipping; wgan-gp: gradient penalty
    loss: Loss = "bce"
    n_critic: int | None = Field(None, gt=0)  # d steps per g step; default 1 for bce, 5 for wgan*
    clip_value: float = Field(0.01, gt=0)  # wgan: critic weights are clipped to [-c, c]
    gp_weight: float = Field(10.0, ge=0)  # wgan-gp: lambda of the gradient penalty
    d_norm: Norm | None = None  # default batch; layer for wgan-gp (batch norm breaks the penalty)
    conditional: bool = False  # cGAN: condition both networks on the class label
    # DiffAugment (genctl/augment.py): e.g. "color,translation,cutout", applied to real and fake
    # images before the discriminator in both updates; "" (off) by default
    diffaugment: DiffAugmentPolicy = ""

    @field_validator("d_norm")
    @classmethod
    def _no_batch_norm_with_gradient_penalty(cls, norm: Norm | None, info: ValidationInfo):
        if norm == "batch" and info.data.get("loss") == "wgan-gp":
            raise ValueError(
                "batch norm cannot be used with loss 'wgan-gp': it mixes the images of a batch, "
                "which the per-image gradient penalty assumes independent; use layer, instance or none"
            )
        return norm

    @model_validator(mode="after")
    def _fill_loss_defaults(self) -> DCGANConfig:
        if self.n_critic is None:
            self.n_critic = 1 if self.loss == "bce" else 5
        if self.d_norm is None:
            self.d_norm = "layer" if self.loss == "wgan-gp" else "batch"
        return self
