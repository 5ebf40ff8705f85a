"""The objectives: reconstruction for the autoencoder, the negative ELBO for the VAE.

Both terms are in nats per image (summed over pixels or latent elements, averaged over the
batch), so ``beta = 1`` is exactly the ELBO of Kingma and Welling (2014):

* ``recon = -log p(x | z)``: with ``recon: bce`` a Bernoulli decoder (binary cross-entropy
  against the image on the [0, 1] scale), with ``recon: mse`` a Gaussian decoder of fixed std
  ``decoder_std``: ``sum((x - x_hat)^2) / (2 std^2)`` (the constant dropped). The std sets how
  much reconstruction counts against the KL term.
* ``kl = KL(N(mu, sigma^2) || N(0, I)) = 0.5 * sum(mu^2 + sigma^2 - 1 - log sigma^2)``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genctl.spec import DataInfo


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) of each sample, summed over its latent elements."""
    return 0.5 * (mu.square() + logvar.exp() - 1 - logvar).flatten(1).sum(1)


def reconstruction_nll(logits: Tensor, target: Tensor, kind: str, std: float) -> Tensor:
    """-log p(target | decoder logits) of each image, for targets in [0, 1]."""
    if kind == "bce":
        nll = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    else:
        nll = (torch.sigmoid(logits) - target).square() / (2 * std**2)
    return nll.flatten(1).sum(1)


class AutoencoderObjective:
    """One optimizer group, the whole network. Logs ``recon``, ``mse`` and (VAE) ``kl``."""

    groups = {"autoencoder": ["autoencoder"]}

    def __init__(self, config, nets: dict[str, nn.Module], data: DataInfo):
        self.config = config
        self.net = nets["autoencoder"]

    def schedule(self, step: int) -> list[str]:
        return ["autoencoder"]

    def beta(self, step: int) -> float:
        """The KL weight at ``step``: ``beta``, ramped up from 0 over ``kl_warmup_steps``."""
        warmup = self.config.kl_warmup_steps
        return self.config.beta * (min(1.0, step / warmup) if warmup else 1.0)

    def loss(
        self, group: str, batch: dict[str, Tensor], step: int
    ) -> tuple[Tensor, dict[str, Tensor]]:
        x = batch["image"]
        target = (x.float() + 1) / 2
        logits, mu, logvar = self.net(x)
        logits = logits.float()
        recon = reconstruction_nll(
            logits, target, self.config.recon, self.config.decoder_std
        ).mean()
        logs = {
            "recon": recon.detach(),
            "mse": F.mse_loss(torch.sigmoid(logits.detach()), target),  # per pixel, [0, 1] scale
        }
        if logvar is None:
            return recon, logs
        kl = gaussian_kl(mu.float(), logvar.float()).mean()
        logs["kl"] = kl.detach()
        return recon + self.beta(step) * kl, logs

    def state_dict(self) -> dict[str, Any]:
        return {}  # the KL warm-up depends on the step alone

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
