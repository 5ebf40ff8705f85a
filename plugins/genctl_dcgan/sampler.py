"""Drawing images from a trained DCGAN generator."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from genctl.errors import BadInput
from genctl.spec import DataInfo, Schema


class DCGANSamplerOptions(Schema):
    label: int | None = Field(
        None,
        ge=0,
        description="class to draw (conditional models); default: cycle through the classes",
    )
    truncation: float | None = Field(
        None,
        gt=0,
        description="draw z from a normal truncated to [-t, t]: smaller t, more typical images, "
        "less variety; default: no truncation",
    )


def draw_noise(n: int, dim: int, generator: torch.Generator, truncation: float | None) -> Tensor:
    """Standard normal noise, truncated by inverting the CDF (one draw, no rejection loop)."""
    if truncation is None:
        return torch.randn(n, dim, generator=generator)
    low = torch.special.ndtr(torch.tensor(-truncation, dtype=torch.float64))
    u = torch.rand(n, dim, generator=generator, dtype=torch.float64)
    return torch.special.ndtri(low + u * (1 - 2 * low)).float()


def class_labels(n: int, label: int | None, num_classes: int, model: str) -> Tensor | None:
    """The labels to draw: ``label`` repeated, or 0, 1, ..., K-1, 0, 1, ... when None."""
    if not num_classes:
        if label is not None:
            raise BadInput(
                f"{model}: label={label} given, but this model is not class-conditional",
                "Drop the label option, or train with model.conditional: true on labelled data.",
            )
        return None
    if label is None:
        return torch.arange(n) % num_classes
    if label >= num_classes:
        raise BadInput(
            f"{model}: label={label} is out of range",
            f"This model has classes 0 to {num_classes - 1}.",
        )
    return torch.full((n,), label)


class DCGANSampler:
    """Noise (and labels) through the generator in eval mode (batch norm on running stats)."""

    chunk = 256  # images per forward pass, to bound memory for large n

    def __init__(self, config, nets: dict[str, nn.Module], data: DataInfo):
        self.config = config
        self.generator = nets.get("generator_ema", nets["generator"])  # EMA weights when kept

    @torch.no_grad()
    def sample(
        self,
        n: int,
        options: DCGANSamplerOptions,
        generator: torch.Generator,
        inputs: Tensor | None = None,
    ) -> Tensor:
        g = self.generator
        labels = class_labels(n, options.label, g.num_classes, "dcgan")
        z = draw_noise(n, self.config.latent_dim, generator, options.truncation)
        device = next(g.parameters()).device
        was_training = g.training
        g.eval()
        try:
            out = [
                g(
                    z[i : i + self.chunk].to(device),
                    None if labels is None else labels[i : i + self.chunk].to(device),
                )
                for i in range(0, n, self.chunk)
            ]
        finally:
            g.train(was_training)
        return ((torch.cat(out).float() + 1) / 2).clamp(0, 1)
