"""The DCGAN objective, with the loss chosen by ``model.loss``.

* ``bce``: the GAN loss of Goodfellow et al. with the non-saturating generator loss
  (maximise log D(G(z)) rather than minimise log(1 - D(G(z)))), on logits for stability.
* ``wgan``: Wasserstein GAN (Arjovsky et al. 2017). The critic maximises
  E[D(real)] - E[D(fake)]; its weights are clipped to [-c, c] from the start and after each
  update, and it takes ``n_critic`` steps per generator step.
* ``wgan-gp``: WGAN with gradient penalty (Gulrajani et al. 2017): instead of clipping,
  lambda * (||grad D(x_hat)|| - 1)^2 on random mixes x_hat of real and fake images.

``model.diffaugment`` (DiffAugment, :mod:`genctl.augment`): every image the discriminator sees,
real or fake, in either update, goes through the same random differentiable transformations
first; WGAN-GP's mixes are of the augmented images, which are what the critic is trained on.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genctl.augment import diff_augment, parse_policy
from genctl.spec import DataInfo, penalty_gradients


class DCGANObjective:
    groups = {"d": ["discriminator"], "g": ["generator"]}
    grad_scaler = None  # set by the trainer: fp16 loss scaling for the gradient penalty

    def __init__(self, config, nets: dict[str, nn.Module], data: DataInfo):
        self.config = config
        self.generator = nets["generator"]
        self.discriminator = nets["discriminator"]
        self.conditional = config.conditional
        self.augment = parse_policy(config.diffaugment)  # () when off
        self._critic_params = list(self.discriminator.parameters())
        # WGAN's critic must be inside the clipping box from its first update on: the paper
        # clips after every update, and freshly initialised weights (batch-norm scales of 1) are
        # far outside [-c, c], so the first critic step would otherwise see an unclipped critic.
        self.clip_critic()

    def schedule(self, step: int) -> list[str]:
        return ["d"] * self.config.n_critic + ["g"]

    def _seen(self, images: Tensor) -> Tensor:
        """What the discriminator sees of real or fake ``images``: DiffAugment's when on."""
        return diff_augment(images, self.augment) if self.augment else images

    def _fake(self, real: Tensor, labels: Tensor | None) -> Tensor:
        z = torch.randn(real.shape[0], self.config.latent_dim, device=real.device)
        return self.generator(z, labels)

    def loss(
        self, group: str, batch: dict[str, Tensor], step: int
    ) -> tuple[Tensor, dict[str, Tensor]]:
        real = batch["image"]
        labels = batch["label"] if self.conditional else None  # fakes get the real batch's classes
        if group == "g":
            # only G steps: skip D's weight gradients. The trainer has frozen them already; called
            # on its own, the loss freezes those that are not and restores them afterwards.
            thawed = [p for p in self._critic_params if p.requires_grad]
            for p in thawed:
                p.requires_grad_(False)
            try:
                score = self.discriminator(self._seen(self._fake(real, labels)), labels)
            finally:
                for p in thawed:
                    p.requires_grad_(True)
            if self.config.loss == "bce":
                return F.softplus(-score).mean(), {}  # = BCE(D(G(z)), 1): non-saturating
            return -score.mean(), {}

        with torch.no_grad():
            fake = self._fake(real, labels)
        real, fake = self._seen(real), self._seen(fake)
        real_score = self.discriminator(real, labels)
        fake_score = self.discriminator(fake, labels)
        if self.config.loss == "bce":
            # BCE(D(x), 1) + BCE(D(G(z)), 0), written on logits
            loss = F.softplus(-real_score).mean() + F.softplus(fake_score).mean()
            return loss, {
                "d_real": torch.sigmoid(real_score).mean().detach(),
                "d_fake": torch.sigmoid(fake_score).mean().detach(),
            }
        # the critic's estimate of the Wasserstein distance between real and fake
        wasserstein = real_score.mean() - fake_score.mean()
        logs = {
            "d_real": real_score.mean().detach(),
            "d_fake": fake_score.mean().detach(),
            "wasserstein": wasserstein.detach(),
        }
        loss = -wasserstein
        if self.config.loss == "wgan-gp":
            gp = self.gradient_penalty(real, fake, labels)
            logs["gp"] = gp.detach()
            loss = loss + self.config.gp_weight * gp
        return loss, logs

    def gradient_penalty(self, real: Tensor, fake: Tensor, labels: Tensor | None) -> Tensor:
        """Mean of (||grad_x D(x)|| - 1)^2 at random points between real and fake images."""
        eps = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
        mixed = (eps * real + (1 - eps) * fake).requires_grad_(True)
        score = self.discriminator(mixed, labels)
        grad = penalty_gradients(score, mixed, self.grad_scaler)
        return (grad.flatten(1).norm(dim=1) - 1).square().mean()

    @torch.no_grad()
    def clip_critic(self) -> None:
        """``wgan``: clip every critic weight to [-clip_value, clip_value]; other losses: nothing."""
        if self.config.loss == "wgan":
            c = self.config.clip_value
            for p in self.discriminator.parameters():
                p.clamp_(-c, c)

    def after_update(self, group: str, step: int) -> None:
        if group == "d":
            self.clip_critic()

    def state_dict(self) -> dict[str, Any]:
        return {}  # stateless: the schedule depends on the step alone

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
