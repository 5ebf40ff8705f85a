"""Pix2Pix's sampler: translate input images (e.g. label maps -> photos)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from genctl.errors import BadInput
from genctl.spec import DataInfo, NoOptions

from .config import Pix2PixConfig


def to_unit(x: Tensor) -> Tensor:
    """[-1, 1] -> [0, 1]."""
    return ((x.float() + 1) / 2).clamp(0, 1)


class Pix2PixSampler:
    """The generator, which callers put in eval mode (the trainer's grids, ``genctl sample``, the
    evaluation): no dropout, so the output is a function of the input alone."""

    def __init__(self, config: Pix2PixConfig, nets: dict[str, nn.Module], info: DataInfo):
        self.generator = nets.get("generator_ema", nets["generator"])  # EMA weights when kept

    @torch.no_grad()
    def sample(
        self, n: int, options: NoOptions, generator: torch.Generator, inputs: Tensor | None = None
    ) -> Tensor:
        if inputs is None:
            raise BadInput(
                "pix2pix translates images and needs input images",
                "Give them with --input DIR_OR_FILE (images like the training inputs).",
            )
        return to_unit(self.generator(inputs[:n]))

    @torch.no_grad()
    def preview(self, batch: dict[str, Tensor], generator: torch.Generator) -> tuple[Tensor, int]:
        """Rows of: input | output | target."""
        x, y = batch["input"][:8], batch["target"][:8]
        columns = [x, self.generator(x), y]
        return to_unit(torch.stack(columns, 1).flatten(0, 1)), len(columns)
