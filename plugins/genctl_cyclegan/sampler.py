"""CycleGAN's sampler: translate input images A -> B (``direction=a2b``) or B -> A.

Callers (the trainer's grids, ``genctl sample``, the evaluation) put the networks in eval mode.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from genctl.errors import BadInput
from genctl.spec import DataInfo, Schema

from .config import CycleGANConfig


class CycleGANSamplerOptions(Schema):
    direction: Literal["a2b", "b2a"] = "a2b"  # a2b: through g_ab (horse -> zebra), b2a back


def to_unit(x: Tensor) -> Tensor:
    """[-1, 1] -> [0, 1]."""
    return ((x.float() + 1) / 2).clamp(0, 1)


class CycleGANSampler:
    def __init__(self, config: CycleGANConfig, nets: dict[str, nn.Module], info: DataInfo):
        # The trainer's EMA weights when the recipe keeps them (train.ema.networks).
        self.g_ab = nets.get("g_ab_ema", nets["g_ab"])
        self.g_ba = nets.get("g_ba_ema", nets["g_ba"])

    @torch.no_grad()
    def sample(
        self,
        n: int,
        options: CycleGANSamplerOptions,
        generator: torch.Generator,
        inputs: Tensor | None = None,
    ) -> Tensor:
        if inputs is None:
            raise BadInput(
                "cyclegan translates images and needs input images",
                "Give them with --input DIR_OR_FILE (and direction=a2b or direction=b2a).",
            )
        net = self.g_ab if options.direction == "a2b" else self.g_ba
        return to_unit(net(inputs[:n]))

    @torch.no_grad()
    def preview(self, batch: dict[str, Tensor], generator: torch.Generator) -> tuple[Tensor, int]:
        """Rows of: real A | A -> B | back to A | real B | B -> A | back to B."""
        g_ab, g_ba = self.g_ab, self.g_ba
        k = min(len(batch["a"]), len(batch["b"]), 8)
        a, b = batch["a"][:k], batch["b"][:k]
        fake_b, fake_a = g_ab(a), g_ba(b)
        columns = [a, fake_b, g_ba(fake_b), b, fake_a, g_ab(fake_a)]
        return to_unit(torch.stack(columns, 1).flatten(0, 1)), len(columns)
