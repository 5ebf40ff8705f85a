"""A critic whose input gradient underflows in float16 unless the loss is scaled, for the tests
of gradient penalties under ``precision: fp16``."""

from __future__ import annotations

import torch
from torch import nn


class UnderflowCritic(nn.Module):
    """x -> 1e4 x -> 1e-4 (.) -> 1e-4 sum: d score / dx = 1e-4 per pixel, but the gradient in
    between is 1e-8, below float16's smallest subnormal (6e-8) without loss scaling."""

    def __init__(self, pixels: int):
        super().__init__()
        self.layers = nn.Sequential(*(nn.Linear(pixels, pixels, bias=False) for _ in range(2)))
        self.head = nn.Linear(pixels, 1, bias=False)
        with torch.no_grad():
            self.layers[0].weight.copy_(torch.eye(pixels) * 1e4)
            self.layers[1].weight.copy_(torch.eye(pixels) * 1e-4)
            self.head.weight.fill_(1e-4)

    def forward(self, x: torch.Tensor, labels=None, **stage) -> torch.Tensor:
        return self.head(self.layers(x.flatten(1))).squeeze(1)


def fp16_scaler() -> torch.amp.GradScaler:
    """An enabled CPU GradScaler; 2^12 keeps the scaled float16 gradients finite."""
    return torch.amp.GradScaler("cpu", init_scale=2.0**12)


def fp16():
    return torch.autocast("cpu", dtype=torch.float16)
