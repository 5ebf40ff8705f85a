"""The schema of a CycleGAN recipe's ``model:`` section (defaults: the paper's)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from genctl.spec import Schema


class CycleGANConfig(Schema):
    # resnet_9blocks: the paper's generator for 256x256 images; resnet_6blocks: its 128x128 one.
    generator: Literal["resnet_9blocks", "resnet_6blocks", "unet"] = "resnet_9blocks"
    ngf: int = Field(64, gt=0)  # generator width: filters of its first layer
    ndf: int = Field(64, gt=0)  # discriminator width
    d_layers: int = Field(3, ge=1)  # PatchGAN depth: 3 gives the 70x70 receptive field
    unet_downs: int | None = Field(None, ge=2)  # unet: default log2(image_size), a 1x1 bottleneck
    norm: Literal["instance", "batch"] = "instance"
    dropout: bool = False  # dropout in the generator (off in the paper)
    lambda_cycle: float = Field(10.0, ge=0)  # weight of each cycle-consistency L1 term
    lambda_identity: float = Field(0.5, ge=0)  # identity L1 weight, relative to lambda_cycle
    pool_size: int = Field(50, ge=0)  # generated-image history for D; 0 turns it off
