"""The DDPM objective: noise an image to a random step, predict the noise (or v), MSE.

This is the "simple" loss of Ho et al. 2020 (eq. 14). For a class-conditional net a fraction
``class_dropout`` of the labels is replaced by the null class, so the same net also learns the
unconditional model that classifier-free guidance needs (Ho & Salimans 2022,
https://arxiv.org/abs/2207.12598).

Options of the recipe's ``model:`` section (all off by default):

- ``min_snr_gamma``: min-SNR-gamma weighting (Hang et al. 2023, https://arxiv.org/abs/2303.09556):
  each item's squared error is weighted so that, in x_0 terms, the weight is ``min(SNR, gamma)``
  (``SNR = abar / (1 - abar)``): the low-noise steps, whose targets are nearly free, stop
  dominating the gradient. The epsilon loss is the x_0 loss times SNR and the v loss is the x_0
  loss times ``SNR + 1``, so the weight is ``min(SNR, gamma) / SNR`` for epsilon and
  ``min(SNR, gamma) / (SNR + 1)`` for v. The paper's gamma is 5.
- ``zero_terminal_snr``: the rescaled schedule of Lin et al. 2023 (``scheduler.py``).
- ``offset_noise``: the training noise gets ``offset_noise * N(0, 1)`` per image and channel
  added (Guttenberg 2023, "Diffusion with offset noise"), so the model also learns to change an
  image's mean brightness, which plain noise almost never asks of it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genctl.spec import DataInfo
from genctl_ddpm.config import DDPMConfig
from genctl_ddpm.scheduler import NoiseSchedule, make_schedule


def min_snr_weight(schedule: NoiseSchedule, t: Tensor, gamma: float) -> Tensor:
    """Min-SNR-gamma weight of each timestep (Hang et al. 2023) for the schedule's target:
    ``min(SNR, gamma) / SNR`` for epsilon, ``min(SNR, gamma) / (SNR + 1)`` for v."""
    abar = schedule.alphas_cumprod.to(t.device)[t]
    snr = abar / (1 - abar)
    clipped = snr.clamp(max=gamma)
    if schedule.prediction == "epsilon":
        return clipped / snr
    return clipped / (snr + 1)


def drop_labels(batch: dict[str, Tensor], num_classes: int, p: float) -> Tensor | None:
    """A class-conditional net's labels with a fraction ``p`` replaced by the null class
    (``num_classes``), so the same net learns the unconditional model classifier-free guidance
    needs; None for an unconditional net. One draw from torch's global generator per label."""
    if not num_classes:
        return None
    label = batch["label"]
    drop = torch.rand(label.shape[0], device=label.device) < p
    return torch.where(drop, torch.full_like(label, num_classes), label)


class DiffusionObjective:
    """One optimizer group, ``unet``, updated every step."""

    groups: Mapping[str, Sequence[str]] = {"unet": ["unet"]}

    def __init__(self, config: DDPMConfig, nets: dict[str, nn.Module], info: DataInfo) -> None:
        self.config = config
        self.unet = nets["unet"]
        self.noise_schedule = make_schedule(config)
        self.num_classes = info.num_classes if config.conditional else 0

    def schedule(self, step: int) -> Sequence[str]:
        return ["unet"]

    def loss(
        self, group: str, batch: dict[str, Tensor], step: int
    ) -> tuple[Tensor, dict[str, Tensor]]:
        x0 = batch["image"]
        n = x0.shape[0]
        # randomness from torch's global generators, which the trainer seeds and checkpoints
        t = torch.randint(0, self.config.timesteps, (n,), device=x0.device)
        noise = torch.randn_like(x0)
        if self.config.offset_noise:
            offset = torch.randn(*x0.shape[:2], 1, 1, device=x0.device, dtype=x0.dtype)
            noise = noise + self.config.offset_noise * offset
        xt = self.noise_schedule.add_noise(x0, noise, t)
        label = drop_labels(batch, self.num_classes, self.config.class_dropout)
        pred = self.unet(xt, t, label)
        target = self.noise_schedule.target(x0, noise, t)
        if self.config.min_snr_gamma is None:
            return F.mse_loss(pred.float(), target.float()), {}
        per_item = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
        return (
            min_snr_weight(self.noise_schedule, t, self.config.min_snr_gamma) * per_item
        ).mean(), {}

    def state_dict(self) -> dict[str, Any]:
        return {}  # nothing kept between steps

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
