"""The schema of an SRGAN recipe's ``model:`` section (defaults: the paper's)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from genctl.spec import Schema


class SRGANConfig(Schema):
    blocks: int = Field(16, ge=1)  # residual blocks in the generator (B in the paper)
    channels: int = Field(64, gt=0)  # generator width
    ndf: int = Field(64, gt=0)  # discriminator width (64-128-256-512)
    # vgg: MSE between VGG-19 feature maps (perceptual); mse: pixel MSE (no VGG weights needed).
    content_loss: Literal["vgg", "mse"] = "vgg"
    # A torchvision vgg19 state_dict (.pth): the whole model's or only its `features.*` keys.
    # Unset: torchvision's ImageNet weights, from torch's cache or downloaded (needs internet).
    vgg_weights: str | None = None
    vgg_layer: Literal["relu5_4", "relu2_2"] = "relu5_4"  # the paper's VGG54 and VGG22
    # The paper rescales VGG feature maps by 1/12.75, i.e. the feature MSE by (1/12.75)^2.
    content_weight: float = Field(0.006, gt=0)
    adversarial_weight: float = Field(1.0e-3, ge=0)
    # Generator-only steps with pixel MSE first (SRResNet), so the GAN starts from a sane
    # upscaler instead of noise; the discriminator waits.
    pretrain_steps: int = Field(0, ge=0)
