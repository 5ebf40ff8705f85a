"""The objectives: reconstruction for the autoencoder, the negative ELBO for the VAE.

Both terms are in nats per image (summed over pixels or latent elements, averaged over the
batch), so ``beta = 1`` is exactly the ELBO of Kingma and Welling (2014):

* ``recon = -log p(x | z)``: with ``recon: bce`` a Bernoulli decoder (binary cross-entropy
  against the image on the [0, 1] scale), with ``recon: mse`` a Gaussian decoder of fixed std
  ``decoder_std``: ``sum((x - x_hat)^2) / (2 std^2)`` (the constant dropped). The std sets how
  much reconstruction counts against the KL term.
* ``kl = KL(N(mu, sigma^2) || N(0, I)) = 0.5 * sum(mu^2 + sigma^2 - 1 - log sigma^2)``.

:func:`negative_elbo` is the VAE's bound on the negative log-likelihood of a test image, with
the decoder's normalising constants kept: what the sampler reports to genctl's evaluation
(``eval/nll``, ``eval/bpd``); :func:`likelihood_protocol` says what it is the likelihood of.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genctl.spec import DataInfo

from .model import reparameterise


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


def negative_elbo(
    net: nn.Module, images: Tensor, kind: str, std: float, generator: torch.Generator
) -> Tensor:
    """-ELBO in nats of each uint8 image (beta = 1, one posterior sample): an upper bound on
    its negative log-likelihood (see :func:`likelihood_protocol` for which likelihood).

    ``bce``: the Bernoulli cross-entropy against the grey levels ``x / 255``, which is the
    expected -log p of the image binarised pixel by pixel with those probabilities.
    ``mse``: the Gaussian decoder's full density (constants kept) of the uniformly dequantised
    image ``y = (x + u) / 256``, plus ``D ln 256``: a bound on -log P(x) of the 8-bit image.
    """
    x = images.float() / 255
    dims = x[0].numel()
    mu, logvar = net.posterior(x * 2 - 1)  # the encoder sees what it was trained on
    eps = torch.randn(mu.shape, generator=generator).to(mu.device, mu.dtype)
    logits = net.decode_logits(reparameterise(mu, logvar, eps)).float()
    if kind == "bce":
        recon = reconstruction_nll(logits, x, "bce", std)
    else:
        u = torch.rand(images.shape, generator=generator).to(images.device)
        y = (images.float() + u) / 256
        constant = dims * (math.log(std) + 0.5 * math.log(2 * math.pi) + math.log(256))
        recon = reconstruction_nll(logits, y, "mse", std) + constant
    return recon + gaussian_kl(mu.float(), logvar.float())


def likelihood_protocol(kind: str, std: float) -> dict[str, str]:
    """How :func:`negative_elbo` measures (recorded by genctl as ``eval.nll_<key>``)."""
    estimator = (
        "negative ELBO (beta = 1 whatever model.beta; analytic KL, one posterior sample per "
        "image): an upper bound on the NLL"
    )
    if kind == "bce":
        return {
            "estimator": estimator,
            "data": "the image binarised pixel by pixel with probability x/255 (dynamic "
            "binarisation), in expectation: the Bernoulli decoder's cross-entropy against the "
            "grey levels; comparable with dynamically binarised MNIST figures, not with 8-bit "
            "bpd (bpd here: bits per binary pixel)",
            "dequantization": "none (a Bernoulli decoder of binary pixels)",
        }
    return {
        "estimator": estimator,
        "data": f"the 8-bit values, under a Gaussian decoder of std {std:g} on the [0, 1] scale",
        "dequantization": "uniform: y = (x + u)/256, u ~ U[0, 1); -log P(x) <= "
        "E_u[-log p(y)] + D ln 256",
    }


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
