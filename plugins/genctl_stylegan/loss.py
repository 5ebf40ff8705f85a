"""The StyleGAN objective: non-saturating logistic loss, R1 penalty, style-mixing regularization.

* Discriminator: softplus(D(fake)) + softplus(-D(real)) + gamma/2 * E||grad_x D(real)||^2 (R1,
  Mescheder et al. 2018). With ``r1_every`` N > 1 the penalty is lazy (StyleGAN2, appendix B):
  every N-th step it is a discriminator update of its own, multiplied by N, which costs far
  less. The discriminator then takes N + 1 updates per N steps, so, as in StyleGAN2, its
  optimizer is corrected by c = N / (N + 1): lr * c and Adam's betas ** c
  (:meth:`StyleGANObjective.optimizer_settings`), keeping its time constants per image.
* Generator: softplus(-D(fake)).
* Style mixing (StyleGAN sec. 3.1): for a share ``style_mixing_prob`` of the generated images two
  latents are drawn and the styles switch from the first to the second at a random layer, so
  that the network cannot assume neighbouring styles are correlated.
* After each generator step the running mean of w (``generator.w_avg``) moves towards the
  batch mean; the truncation trick pulls towards it when sampling.
* ``model.diffaugment`` (DiffAugment, :mod:`genctl.augment`): every image the discriminator sees,
  real or fake, in both updates, goes through the same random differentiable transformations
  first; R1 is the gradient at the real images through the augmentation (the DiffAugment
  authors' StyleGAN2 code takes it so).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from genctl.augment import diff_augment, parse_policy
from genctl.spec import DataInfo, penalty_gradients
from genctl_stylegan.config import StyleGANConfig
from genctl_stylegan.model import mix_styles


def r1_penalty(
    discriminator: nn.Module, real: torch.Tensor, scaler=None, augment=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """D's scores on ``real`` and the R1 penalty E||grad_x D(x)||^2 at those images.
    ``scaler``: the trainer's GradScaler (fp16 loss scaling of the gradient, see
    ``genctl.spec.penalty_gradients``). ``augment``: what D sees of the images (DiffAugment);
    the gradient is still taken at ``real``, through it."""
    real = real.detach().requires_grad_(True)
    scores = discriminator(augment(real) if augment is not None else real)
    grad = penalty_gradients(scores, real, scaler)
    return scores, grad.pow(2).flatten(1).sum(dim=1).mean()


class StyleGANObjective:
    grad_scaler = None  # set by the trainer: fp16 loss scaling for the R1 penalty

    def __init__(self, config: StyleGANConfig, nets: dict[str, nn.Module], data: DataInfo):
        self.config = config
        self.generator, self.discriminator = nets["generator"], nets["discriminator"]
        self.groups = {"d": ["discriminator"], "g": ["generator"]}
        self._d_updates = 0
        self.augment = parse_policy(config.diffaugment)  # () when off

    def _seen(self, images: torch.Tensor) -> torch.Tensor:
        """What the discriminator sees of real or fake ``images``: DiffAugment's when on."""
        return diff_augment(images, self.augment) if self.augment else images

    @property
    def lazy_r1(self) -> bool:
        return self.config.r1_gamma > 0 and self.config.r1_every > 1

    def schedule(self, step: int) -> list[str]:
        self._d_updates = 0  # counts this step's "d" updates: the second is the lazy R1 one
        if self.lazy_r1 and step % self.config.r1_every == 0:
            return ["d", "d", "g"]
        return ["d", "g"]

    def optimizer_settings(self, group: str, settings: dict[str, Any]) -> dict[str, Any]:
        """Lazy R1: the discriminator's lr * c and Adam's betas ** c, c = N / (N + 1)
        (StyleGAN2 appendix B; ``mb_ratio`` of the official code)."""
        if group != "d" or not self.lazy_r1:
            return settings
        c = self.config.r1_every / (self.config.r1_every + 1)
        return {
            **settings,
            "lr": settings["lr"] * c,
            "betas": tuple(b**c for b in settings["betas"]),
        }

    def generate(self, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Fakes for training, with style mixing; also the first latents' w (for w_avg)."""
        g, num_ws = self.generator, self.generator.num_ws
        w1 = g.mapping(torch.randn(n, g.z_dim, device=device))
        if self.config.style_mixing_prob > 0 and num_ws > 1:
            w2 = g.mapping(torch.randn(n, g.z_dim, device=device))
            crossover = torch.where(
                torch.rand(n, device=device) < self.config.style_mixing_prob,
                torch.randint(1, num_ws, (n,), device=device),
                torch.full((n,), num_ws, device=device),
            )
            ws = mix_styles(w1, w2, crossover, num_ws)
        else:
            ws = g.broadcast(w1)
        return g.synthesis(ws), w1

    def loss(
        self, group: str, batch: dict[str, torch.Tensor], step: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        real = batch["image"]
        if group == "d":
            gamma, every = self.config.r1_gamma, self.config.r1_every
            if self.lazy_r1:
                self._d_updates = getattr(self, "_d_updates", 0) + 1
                if self._d_updates == 2:  # the lazy R1 update of this step
                    d_real, r1 = r1_penalty(self.discriminator, real, self.grad_scaler, self._seen)
                    # d_real * 0 keeps every weight in the graph (a zero gradient, not none)
                    loss = gamma / 2 * r1 * every + d_real.sum() * 0
                    return loss, {"r1": r1.detach()}
            with torch.no_grad():
                fake, _ = self.generate(len(real), real.device)
            d_fake = self.discriminator(self._seen(fake))
            logs: dict[str, torch.Tensor] = {}
            if gamma > 0 and not self.lazy_r1:
                d_real, r1 = r1_penalty(self.discriminator, real, self.grad_scaler, self._seen)
                penalty = gamma / 2 * r1
                logs["r1"] = r1.detach()
            else:
                d_real, penalty = self.discriminator(self._seen(real)), 0.0
            loss = F.softplus(d_fake).mean() + F.softplus(-d_real).mean() + penalty
            logs |= {"d_real": d_real.mean().detach(), "d_fake": d_fake.mean().detach()}
            return loss, logs
        fake, w = self.generate(len(real), real.device)
        d_fake = self.discriminator(self._seen(fake))
        self.generator.update_w_avg(w, self.config.w_avg_beta)
        return F.softplus(-d_fake).mean(), {"d_fake": d_fake.mean().detach()}

    def state_dict(self) -> dict[str, Any]:
        return {}  # w_avg lives in the generator's buffers, saved with its weights

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def build_objective(
    config: StyleGANConfig, nets: dict[str, nn.Module], data: DataInfo
) -> StyleGANObjective:
    return StyleGANObjective(config, nets, data)
