"""The objective: cross-entropy of the labels, on images with a little noise (``model.noise``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genctl.spec import DataInfo

from .config import ClassifierConfig


class ClassifierObjective:
    groups = {"c": ["classifier"]}

    def __init__(self, config: ClassifierConfig, nets: dict[str, nn.Module], info: DataInfo):
        self.config, self.net = config, nets["classifier"]

    def schedule(self, step: int) -> list[str]:
        return ["c"]

    def loss(
        self, group: str, batch: dict[str, Tensor], step: int
    ) -> tuple[Tensor, dict[str, Tensor]]:
        x, y = batch["image"], batch["label"]
        if self.config.noise > 0:
            sigma = torch.rand(len(x), 1, 1, 1, device=x.device) * self.config.noise
            x = x + sigma * torch.randn_like(x)
        logits = self.net(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.config.label_smoothing)
        accuracy = (logits.detach().argmax(1) == y).float().mean()
        return loss, {"accuracy": accuracy}  # of the (noisy) training batch

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
