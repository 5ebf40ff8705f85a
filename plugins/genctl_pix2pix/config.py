"""The schema of a Pix2Pix recipe's ``model:`` section (defaults: the paper's)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from genctl.spec import Schema


class Pix2PixConfig(Schema):
    ngf: int = Field(64, gt=0)  # generator width: filters of the U-Net's first layer
    ndf: int = Field(64, gt=0)  # discriminator width
    unet_downs: int | None = Field(None, ge=2)  # default log2(image_size): a 1x1 bottleneck
    d_layers: int = Field(3, ge=1)  # PatchGAN depth: 3 gives the 70x70 receptive field
    # At the paper's batch size of 1, batch norm is instance norm with learned scale and shift,
    # and the paper's test protocol (statistics of the test image) is instance norm too.
    norm: Literal["instance", "batch"] = "instance"
    dropout: bool = True  # dropout in the widest decoder blocks, the paper's only noise source
    lambda_l1: float = Field(100.0, ge=0)  # weight of the L1 distance to the target
