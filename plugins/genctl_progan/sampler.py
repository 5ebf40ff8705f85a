"""Drawing images from a ProGAN generator at the growth stage it was last trained at.

Below the final resolution the images come back at the resolution trained: never upsampled
unless ``upsample=true`` asks for it, so a score of such images cannot pass for a full-size one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genctl.spec import DataInfo, Schema, noise


class ProGANSamplerOptions(Schema):
    # During growth (training-time grids, a run stopped before its last fade-in) it draws below
    # data.image_size; its images come back at that resolution unless this asks for a
    # nearest-neighbour upsampling to data.image_size (same-size grids, pixels left visible).
    upsample: bool = False


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Generator output (about [-1, 1]) -> images in [0, 1]."""
    return ((x.float().clamp(-1, 1) + 1) / 2).cpu()


class ProGANSampler:
    generator_per_image = True  # sample() takes a list of n generators, one per image

    def __init__(self, config, nets: dict[str, nn.Module], data: DataInfo):
        self.generator = nets.get(
            "generator_ema", nets["generator"]
        )  # the EMA when trained with one
        self.image_size = data.image_size

    @torch.no_grad()
    def sample(
        self,
        n: int,
        options: ProGANSamplerOptions,
        generator: torch.Generator,
        inputs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        device = next(self.generator.parameters()).device
        depth, alpha = self.generator.stage()
        z = noise("randn", (n, self.generator.latent_dim), generator).to(device)
        x = to_unit(self.generator(z, depth, alpha))
        if options.upsample and x.shape[-1] < self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="nearest")
        return x

    # The latent interface (genctl.steering): z is the generator's input noise, N x latent_dim.

    def latent(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` latents from the prior, N(0, I), drawn on the CPU ``generator``."""
        return noise("randn", (n, self.generator.latent_dim), generator)

    def generate(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Images in [0, 1] of latents ``z``, differentiable in ``z``, at the growth stage last
        trained (the final resolution once training is done), never upsampled: a classifier
        that needs another size is given a resized copy by genctl.steering."""
        device = next(self.generator.parameters()).device
        depth, alpha = self.generator.stage()
        return (self.generator(z.to(device), depth, alpha).float().clamp(-1, 1) + 1) / 2


def build_sampler(config, nets: dict[str, nn.Module], data: DataInfo) -> ProGANSampler:
    return ProGANSampler(config, nets, data)
