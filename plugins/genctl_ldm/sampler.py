"""Sampling: ddpm's loop (DDPM/DDIM, classifier-free guidance, guidance by a loss) in latent
space, decoded to images at the end; img2img encodes the inputs first."""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from genctl_ddpm.sampler import DDPMSampleOptions, DiffusionSampler
from torch import Tensor, nn

from genctl.errors import BadInput
from genctl.spec import DataInfo
from genctl_ldm.config import LDMConfig
from genctl_ldm.model import LatentSpace


class LatentDiffusionSampler(DiffusionSampler):
    """``sample()`` gives decoded images in [0, 1] of the data's shape, as any genctl sampler."""

    def __init__(self, config: LDMConfig, nets: dict[str, nn.Module], info: DataInfo) -> None:
        self.space: LatentSpace = nets["latent"]
        self.space.check_autoencoder()  # the one it was trained on, or bad input naming it
        c, side, _ = self.space.latent_shape
        super().__init__(config, nets, replace(info, channels=c, image_size=side))
        self.image_info = info

    def sample(
        self,
        n: int,
        options: DDPMSampleOptions,
        generator: torch.Generator,
        inputs: Tensor | None = None,
        labels: Tensor | None = None,
    ) -> Tensor:
        """``n`` decoded images; with ``inputs`` (img2img), their latents noised to
        ``strength`` and denoised, then decoded."""
        if inputs is not None:
            inputs = self.encode(inputs)
        return super().sample(n, options, generator, inputs, labels)

    def encode(self, images: Tensor) -> Tensor:
        """Images in [-1, 1] (any size: resized to the autoencoder's) -> scaled latents."""
        info = self.image_info
        if images.shape[1] != info.channels:
            raise BadInput(
                f"the input images have {images.shape[1]} channels, the model makes {info.channels}",
                "Load the inputs with the model's channel count.",
            )
        size = info.image_size
        x = images.to(self.device).float()
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, (size, size), mode="bilinear", antialias=True, align_corners=False)
        return self.space.encode(x.clamp(-1, 1))

    def _fit(self, x: Tensor) -> Tensor:
        return x  # latents already: no resize, and no clamp to the image range

    def output(self, x: Tensor) -> Tensor:
        """Decoded images in [0, 1]."""
        with torch.no_grad():
            return ((self.space.decode(x).float() + 1) / 2).clamp(0, 1)

    def _guide(self, opts: DDPMSampleOptions, device: torch.device):
        """Guidance by a loss judges the decoded estimate of x_0 (through the decoder)."""
        pixel_info, self.info = self.info, self.image_info
        try:
            guide = super()._guide(opts, device)
        finally:
            self.info = pixel_info
        if guide is None:
            return None
        fn, scale = guide
        return (lambda z0, t: fn(self.space.decode(z0), t)), scale
