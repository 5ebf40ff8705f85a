"""The original GAN loss (Goodfellow et al. 2014), on logits, with the non-saturating generator loss.

The discriminator minimises BCE(D(x), 1) + BCE(D(G(z)), 0); the generator minimises
BCE(D(G(z)), 1), which gives strong gradients early on, when D rejects every fake easily.

``model.diffaugment`` (DiffAugment, :mod:`genctl.augment`): the images D sees, real and fake, in
both updates, go through the same random differentiable transformations first.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genctl.augment import diff_augment, parse_policy
from genctl.spec import DataInfo


class VanillaGANObjective:
    groups = {"d": ["discriminator"], "g": ["generator"]}

    def __init__(self, config, nets: dict[str, nn.Module], data: DataInfo):
        self.latent_dim = config.latent_dim
        self.conditional = config.conditional
        self.generator = nets["generator"]
        self.discriminator = nets["discriminator"]
        self.augment = parse_policy(config.diffaugment)  # () when off

    def schedule(self, step: int) -> list[str]:
        return ["d", "g"]

    def _seen(self, images: Tensor) -> Tensor:
        """What the discriminator sees of real or fake ``images``: DiffAugment's when on."""
        return diff_augment(images, self.augment) if self.augment else images

    def loss(
        self, group: str, batch: dict[str, Tensor], step: int
    ) -> tuple[Tensor, dict[str, Tensor]]:
        real = batch["image"]
        labels = batch["label"] if self.conditional else None
        z = torch.randn(real.shape[0], self.latent_dim, device=real.device)
        if group == "g":
            self.discriminator.requires_grad_(False)  # only G steps: skip D's weight gradients
            try:
                fake_logit = self.discriminator(self._seen(self.generator(z, labels)), labels)
            finally:
                self.discriminator.requires_grad_(True)
            return F.softplus(-fake_logit).mean(), {}
        with torch.no_grad():
            fake = self.generator(z, labels)
        real_logit = self.discriminator(self._seen(real), labels)
        fake_logit = self.discriminator(self._seen(fake), labels)
        loss = F.softplus(-real_logit).mean() + F.softplus(fake_logit).mean()
        return loss, {
            "d_real": torch.sigmoid(real_logit).mean().detach(),
            "d_fake": torch.sigmoid(fake_logit).mean().detach(),
        }

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
