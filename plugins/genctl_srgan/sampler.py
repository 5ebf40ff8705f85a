"""SRGAN's sampler: upscale low-resolution images by the trained scale.

``method=bicubic`` upscales the same inputs bicubically, the baseline that PSNR/SSIM of the
generator are read against. Callers put the generator in eval mode (batch norm on running
statistics).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genctl.errors import BadInput
from genctl.spec import DataInfo, Schema

from .config import SRGANConfig


class SRGANSamplerOptions(Schema):
    method: Literal["generator", "bicubic"] = "generator"  # bicubic: the baseline to compare


def to_unit(x: Tensor) -> Tensor:
    """[-1, 1] -> [0, 1]."""
    return ((x.float() + 1) / 2).clamp(0, 1)


def bicubic(lr: Tensor, scale: int) -> Tensor:
    """Bicubic upscaling of images in [-1, 1], clamped back to [-1, 1]."""
    return F.interpolate(lr.float(), scale_factor=scale, mode="bicubic", align_corners=False).clamp(
        -1, 1
    )


class SRGANSampler:
    def __init__(self, config: SRGANConfig, nets: dict[str, nn.Module], info: DataInfo):
        self.generator = nets.get("generator_ema", nets["generator"])  # EMA weights when kept
        self.scale = info.scale

    @torch.no_grad()
    def sample(
        self,
        n: int,
        options: SRGANSamplerOptions,
        generator: torch.Generator,
        inputs: Tensor | None = None,
    ) -> Tensor:
        if inputs is None:
            raise BadInput(
                "srgan upscales images and needs low-resolution input images",
                f"Give them with --input DIR_OR_FILE; each comes out {self.scale}x larger.",
            )
        lr = inputs[:n]
        if options.method == "bicubic":
            return to_unit(bicubic(lr, self.scale))
        return to_unit(self.generator(lr))

    @torch.no_grad()
    def preview(self, batch: dict[str, Tensor], generator: torch.Generator) -> tuple[Tensor, int]:
        """Rows of: low resolution (pixels enlarged) | bicubic | generator | high resolution."""
        lr, hr = batch["lr"][:8], batch["hr"][:8]
        nearest = F.interpolate(lr.float(), scale_factor=self.scale, mode="nearest")
        columns = [nearest, bicubic(lr, self.scale), self.generator(lr).float(), hr.float()]
        return to_unit(torch.stack(columns, 1).flatten(0, 1)), len(columns)
