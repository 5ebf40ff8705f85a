"""PixelCNN: an autoregressive image model with masked convolutions (gated, two stacks)."""

from __future__ import annotations

import genctl
from genctl.spec import ModelSpec

from .config import PixelCNNConfig
from .loss import PixelCNNObjective
from .model import PixelCNN, build
from .sampler import PixelCNNSampler, PixelCNNSamplerOptions

__all__ = [
    "PixelCNN",
    "PixelCNNConfig",
    "PixelCNNObjective",
    "PixelCNNSampler",
    "PixelCNNSamplerOptions",
]


@genctl.hookimpl
def genctl_register_models(registry) -> None:
    registry.add(
        ModelSpec(
            name="pixelcnn",
            task="unconditional",
            config=PixelCNNConfig,
            build=build,
            objective=PixelCNNObjective,
            sampler=PixelCNNSampler,
            sampler_options=PixelCNNSamplerOptions,
            description="Gated PixelCNN: exact likelihood, pixel-by-pixel sampling; "
            "optional class conditioning",
            paper="https://arxiv.org/abs/1606.05328",
        )
    )
