"""Drawing images from a trained DCGAN generator."""

from __future__ import annotations

import torch
from pydantic import AliasChoices, Field
from torch import Tensor, nn

from genctl.spec import DataInfo, Schema, labels_to_draw, noise


class DCGANSamplerOptions(Schema):
    model_config = Schema.model_config | {"populate_by_name": True}

    class_: int | None = Field(
        None,
        alias="class",
        validation_alias=AliasChoices("class", "label"),  # label=: its first name
        ge=0,
        description="class to draw (conditional models); default: the classes genctl gives, "
        "image i of class i mod the number of classes",
    )
    truncation: float | None = Field(
        None,
        gt=0,
        description="draw z from a normal truncated to [-t, t]: smaller t, more typical images, "
        "less variety; default: no truncation",
    )


def draw_noise(
    n: int, dim: int, generator: torch.Generator | list[torch.Generator], truncation: float | None
) -> Tensor:
    """Standard normal noise, truncated by inverting the CDF (one draw, no rejection loop).
    A list of ``n`` generators: row i is the first draw of generator i."""
    if truncation is None:
        return noise("randn", (n, dim), generator)
    low = torch.special.ndtr(torch.tensor(-truncation, dtype=torch.float64))
    u = noise("rand", (n, dim), generator, torch.float64)
    return torch.special.ndtri(low + u * (1 - 2 * low)).float()


class DCGANSampler:
    """Noise (and labels) through the generator in eval mode (batch norm on running stats)."""

    chunk = 256  # images per forward pass, to bound memory for large n
    generator_per_image = True  # sample() takes a list of n generators, one per image

    def __init__(self, config, nets: dict[str, nn.Module], data: DataInfo):
        self.config = config
        self.generator = nets.get("generator_ema", nets["generator"])  # EMA weights when kept
        self.num_classes = self.generator.num_classes  # 0: unconditional, takes no labels

    @torch.no_grad()
    def sample(
        self,
        n: int,
        options: DCGANSamplerOptions,
        generator: torch.Generator,
        inputs: Tensor | None = None,
        labels: Tensor | None = None,
    ) -> Tensor:
        """``n`` images; image i of class ``labels[i]`` for a conditional model."""
        labels = labels_to_draw(self, n, options, labels)
        z = draw_noise(n, self.config.latent_dim, generator, options.truncation)
        return torch.cat(
            [
                self.generate(
                    z[i : i + self.chunk], None if labels is None else labels[i : i + self.chunk]
                )
                for i in range(0, n, self.chunk)
            ]
        )

    # The latent interface (genctl.steering): z is the generator's input noise, N x latent_dim.

    def latent(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` latents from the prior, N(0, I), drawn on the CPU ``generator``."""
        return draw_noise(n, self.config.latent_dim, generator, None)

    def generate(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """Images in [0, 1] of latents ``z``, differentiable in ``z`` (generator in eval mode);
        a conditional model draws ``labels`` (default: image i of class i mod num_classes)."""
        g = self.generator
        labels = labels_to_draw(self, len(z), DCGANSamplerOptions(), labels)
        device = next(g.parameters()).device
        was_training = g.training
        g.eval()
        try:
            x = g(z.to(device), None if labels is None else labels.to(device))
        finally:
            g.train(was_training)
        return ((x.float() + 1) / 2).clamp(0, 1)
