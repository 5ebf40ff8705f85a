"""Drawing images from a trained MLP generator."""

from __future__ import annotations

import torch
from pydantic import AliasChoices, Field
from torch import Tensor, nn

from genctl.spec import DataInfo, Schema, labels_to_draw, noise


class VanillaGANSamplerOptions(Schema):
    model_config = Schema.model_config | {"populate_by_name": True}

    class_: int | None = Field(
        None,
        alias="class",
        validation_alias=AliasChoices("class", "label"),  # label=: its first name
        ge=0,
        description="class to draw (conditional models); default: the classes genctl gives, "
        "image i of class i mod the number of classes",
    )


class VanillaGANSampler:
    generator_per_image = True  # sample() takes a list of n generators, one per image

    def __init__(self, config, nets: dict[str, nn.Module], data: DataInfo):
        self.generator = nets.get("generator_ema", nets["generator"])  # EMA weights when kept
        self.num_classes = self.generator.num_classes  # 0: unconditional, takes no labels

    @torch.no_grad()
    def sample(
        self,
        n: int,
        options: VanillaGANSamplerOptions,
        generator: torch.Generator,
        inputs: Tensor | None = None,
        labels: Tensor | None = None,
    ) -> Tensor:
        """``n`` images; image i of class ``labels[i]`` for a conditional model."""
        g = self.generator
        labels = labels_to_draw(self, n, options, labels)
        z = noise("randn", (n, g.latent_dim), generator)
        return self.generate(z, labels)  # eval mode: each image independent of the others

    # The latent interface (genctl.steering): z is the generator's input noise, N x latent_dim.

    def latent(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` latents from the prior, N(0, I), drawn on the CPU ``generator``."""
        return torch.randn(n, self.generator.latent_dim, generator=generator)

    def generate(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """Images in [0, 1] of latents ``z``, differentiable in ``z`` (generator in eval mode);
        a conditional model draws ``labels`` (default: image i of class i mod num_classes)."""
        g = self.generator
        labels = labels_to_draw(self, len(z), VanillaGANSamplerOptions(), labels)
        device = next(g.parameters()).device
        was_training = g.training
        g.eval()
        try:
            x = g(z.to(device), None if labels is None else labels.to(device))
        finally:
            g.train(was_training)
        return ((x.float() + 1) / 2).clamp(0, 1)
