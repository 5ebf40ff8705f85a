"""Drawing images from a trained MLP generator."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from genctl.errors import BadInput
from genctl.spec import DataInfo, Schema


class VanillaGANSamplerOptions(Schema):
    label: int | None = Field(
        None,
        ge=0,
        description="class to draw (conditional models); default: cycle through the classes",
    )


class VanillaGANSampler:
    def __init__(self, config, nets: dict[str, nn.Module], data: DataInfo):
        self.generator = nets.get("generator_ema", nets["generator"])  # EMA weights when kept

    @torch.no_grad()
    def sample(
        self,
        n: int,
        options: VanillaGANSamplerOptions,
        generator: torch.Generator,
        inputs: Tensor | None = None,
    ) -> Tensor:
        g = self.generator
        k, label = g.num_classes, options.label
        if label is not None and not 0 <= label < k:
            why = f"its classes are 0 to {k - 1}" if k else "this model is not class-conditional"
            raise BadInput(f"vanilla_gan: label={label} cannot be drawn: {why}")
        labels = None
        if k:  # by default image i gets class i mod k
            labels = torch.arange(n) % k if label is None else torch.full((n,), label)
        z = torch.randn(n, g.latent_dim, generator=generator)
        device = next(g.parameters()).device
        was_training = g.training
        g.eval()  # batch norm on its running statistics: each image independent of the others
        try:
            x = g(z.to(device), None if labels is None else labels.to(device))
        finally:
            g.train(was_training)
        return ((x.float() + 1) / 2).clamp(0, 1)
