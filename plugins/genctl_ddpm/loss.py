"""The DDPM objective: noise an image to a random step, predict the noise (or v), MSE.

This is the "simple" loss of Ho et al. 2020 (eq. 14). For a class-conditional net a fraction
``class_dropout`` of the labels is replaced by the null class, so the same net also learns the
unconditional model that classifier-free guidance needs (Ho & Salimans 2022,
https://arxiv.org/abs/2207.12598).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genctl.spec import DataInfo
from genctl_ddpm.config import DDPMConfig
from genctl_ddpm.scheduler import make_schedule


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
        xt = self.noise_schedule.add_noise(x0, noise, t)
        label = None
        if self.num_classes:
            label = batch["label"]
            drop = torch.rand(n, device=x0.device) < self.config.class_dropout
            label = torch.where(drop, torch.full_like(label, self.num_classes), label)
        pred = self.unet(xt, t, label)
        mse = F.mse_loss(pred.float(), self.noise_schedule.target(x0, noise, t).float())
        return mse, {}

    def state_dict(self) -> dict[str, Any]:
        return {}  # nothing kept between steps

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
