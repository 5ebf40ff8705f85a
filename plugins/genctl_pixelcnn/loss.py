"""The PixelCNN objective: the negative log-likelihood of the data, sub-pixel by sub-pixel.

Each sub-pixel is quantised to ``levels`` values and the network's softmax over them is
trained with cross-entropy: the mean over sub-pixels is the loss (nats per dimension), and
``bpd``, the same in bits per dimension, is logged. With fewer than 256 levels the data is
coarser, so bpd is lower than, and not comparable with, published 8-bit figures.
"""

from __future__ import annotations

import math
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from genctl.spec import DataInfo


class PixelCNNObjective:
    groups = {"pixelcnn": ["pixelcnn"]}

    def __init__(self, config, nets: dict[str, nn.Module], data: DataInfo):
        self.net = nets["pixelcnn"]
        self.conditional = config.conditional

    def schedule(self, step: int) -> list[str]:
        return ["pixelcnn"]

    def loss(
        self, group: str, batch: dict[str, Tensor], step: int
    ) -> tuple[Tensor, dict[str, Tensor]]:
        target = self.net.quantise(batch["image"])
        labels = batch["label"] if self.conditional else None
        logits = self.net(self.net.to_input(target), labels)
        nll = F.cross_entropy(logits.float(), target)  # nats per sub-pixel
        return nll, {"bpd": nll.detach() / math.log(2)}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
