"""Pix2Pix's objective: a conditional GAN loss plus lambda times L1 (Isola et al. 2017, eq. 4).

Generator step::

    fake = G(x)
    loss_g = BCE(D(x, fake), 1) + lambda_l1 * |fake - y|        (non-saturating GAN loss)

Discriminator step, on (input, target) and (input, output) pairs::

    loss_d = (BCE(D(x, y), 1) + BCE(D(x, G(x)), 0)) / 2         (halved: D learns slower than G)

L1 rather than L2: it blurs less, and it takes care of the low frequencies, so the PatchGAN
need only judge local texture.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genctl.spec import DataInfo

from .config import Pix2PixConfig


class Pix2PixObjective:
    groups = {"g": ["generator"], "d": ["discriminator"]}

    def __init__(self, config: Pix2PixConfig, nets: dict[str, nn.Module], info: DataInfo):
        self.config = config
        self.generator = nets["generator"]
        self.discriminator = nets["discriminator"]
        # The generator step's (input, output) pair, reused detached by the discriminator step
        # that follows: one generator pass per step instead of two.
        self._fake_pair: tuple[Tensor, Tensor] | None = None

    def schedule(self, step: int) -> list[str]:
        return ["g", "d"]

    def loss(
        self, group: str, batch: dict[str, Tensor], step: int
    ) -> tuple[Tensor, dict[str, Tensor]]:
        x, y = batch["input"], batch["target"]
        if group == "g":
            fake = self.generator(x)
            adv = F.softplus(-self.discriminator(x, fake)).mean()  # = BCE(D(x, G(x)), 1) on logits
            l1 = F.l1_loss(fake, y)
            self._fake_pair = (x, fake.detach())
            return adv + self.config.lambda_l1 * l1, {"adv": adv.detach(), "l1": l1.detach()}

        if self._fake_pair is None:  # no generator step before this one: translate afresh
            with torch.no_grad():
                self._fake_pair = (x, self.generator(x))
        fake_x, fake = self._fake_pair
        self._fake_pair = None
        real_score = self.discriminator(x, y)
        fake_score = self.discriminator(fake_x, fake)
        loss = 0.5 * (F.softplus(-real_score).mean() + F.softplus(fake_score).mean())
        return loss, {
            "d_real": torch.sigmoid(real_score).mean().detach(),
            "d_fake": torch.sigmoid(fake_score).mean().detach(),
        }

    def state_dict(self) -> dict[str, Any]:
        return {}  # nothing kept between steps

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._fake_pair = None
