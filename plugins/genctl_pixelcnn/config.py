"""The schema of a PixelCNN recipe's ``model:`` section."""

from __future__ import annotations

from pydantic import Field, field_validator

from genctl.spec import Schema


class PixelCNNConfig(Schema):
    levels: int = Field(256, ge=2, le=256)  # values per sub-pixel: a `levels`-way softmax each
    width: int = Field(64, gt=0)  # channels of each stack (vertical and horizontal)
    layers: int = Field(8, ge=0)  # gated layers after the first (mask A) one
    kernel_size: int = Field(3, ge=3)  # of the gated layers; odd
    first_kernel_size: int = Field(7, ge=3)  # of the first layer; odd
    conditional: bool = False  # condition every layer on the class label

    @field_validator("kernel_size", "first_kernel_size")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"must be odd (the kernel is centred on a pixel), got {v}")
        return v
