"""The flow matching objective (Lipman et al. 2023) on the straight path of rectified flow (Liu
et al. 2023): ``x_t = (1 - t) x_0 + t noise``, t in [0, 1] (t = 1 is pure noise), and the UNet
learns the path's velocity ``v = d x_t / dt = noise - x_0`` with a plain MSE.

t is drawn uniformly, or logit-normally (``sigmoid(N(logit_mean, logit_std))``, Esser et al.
2024, SD3's 0 and 1), which spends more of the training on the middle of the path, where the
velocity is hardest to guess. For a class-conditional net a fraction ``class_dropout`` of the
labels is replaced by the null class, as in the ddpm family, for classifier-free guidance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from genctl_ddpm.loss import drop_labels
from torch import Tensor, nn

from genctl.spec import DataInfo
from genctl_flow.config import TIME_SCALE, FlowConfig


def draw_times(config: FlowConfig, n: int, device: torch.device) -> Tensor:
    """``n`` training times in [0, 1] (from torch's global generator, which the trainer seeds
    and checkpoints, so a resumed run draws what an uninterrupted one would)."""
    if config.time_sampling == "uniform":
        return torch.rand(n, device=device)
    return torch.sigmoid(config.logit_mean + config.logit_std * torch.randn(n, device=device))


def interpolate(x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """The point at time ``t`` (one per image) on the straight path from ``x0`` to ``noise``."""
    t = t.view(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    return (1 - t) * x0 + t * noise


class FlowMatchingObjective:
    """One optimizer group, ``unet``, updated every step."""

    groups: Mapping[str, Sequence[str]] = {"unet": ["unet"]}

    def __init__(self, config: FlowConfig, nets: dict[str, nn.Module], info: DataInfo) -> None:
        self.config = config
        self.unet = nets["unet"]
        self.num_classes = info.num_classes if config.conditional else 0

    def schedule(self, step: int) -> Sequence[str]:
        return ["unet"]

    def loss(
        self, group: str, batch: dict[str, Tensor], step: int
    ) -> tuple[Tensor, dict[str, Tensor]]:
        x0 = batch["image"]
        n = x0.shape[0]
        t = draw_times(self.config, n, x0.device)
        noise = torch.randn_like(x0)
        label = drop_labels(batch, self.num_classes, self.config.class_dropout)
        pred = self.unet(interpolate(x0, noise, t), t * TIME_SCALE, label)
        return F.mse_loss(pred.float(), (noise - x0).float()), {}

    def state_dict(self) -> dict[str, Any]:
        return {}  # nothing kept between steps

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
