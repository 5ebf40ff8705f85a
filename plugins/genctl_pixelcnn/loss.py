"""The PixelCNN objective: the negative log-likelihood of the data, sub-pixel by sub-pixel.

Each sub-pixel is quantised to ``levels`` values and the network's softmax over them is
trained with cross-entropy: the mean over sub-pixels is the loss (nats per dimension), and
``bpd``, the same in bits per dimension, is logged. With fewer than 256 levels the data is
coarser, so bpd is lower than, and not comparable with, published 8-bit figures.

:func:`image_nll` is the same likelihood per image, summed over sub-pixels: what the sampler
reports to genctl's evaluation (``eval/nll``, ``eval/bpd`` on the test split).
"""

from __future__ import annotations

import math
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from genctl.errors import BadInput
from genctl.spec import DataInfo


def image_nll(net: nn.Module, images: Tensor, labels: Tensor | None = None) -> Tensor:
    """-log p(x) in nats of each uint8 image (N x C x H x W), exact: the sum over sub-pixels of
    the cross-entropy of its level, quantised as in training (8-bit value -> [-1, 1] ->
    ``levels`` levels), so it is the likelihood of the ``levels``-level image."""
    if net.num_classes and labels is None:
        raise BadInput(
            "pixelcnn: this model is class-conditional; its likelihood needs the images' labels",
            "Measure nll on labelled data (the test split of mnist or cifar10, or a labelled "
            "image folder).",
        )
    target = net.quantise(images.float() / 127.5 - 1)  # the loader's uint8 -> [-1, 1]
    logits = net(net.to_input(target), labels if net.num_classes else None)
    nll = F.cross_entropy(logits.float(), target, reduction="none")
    return nll.flatten(1).sum(1)


def likelihood_protocol(levels: int, conditional: bool) -> dict[str, str]:
    """How :func:`image_nll` measures (recorded by genctl as ``eval.nll_<key>``)."""
    given = " given the class label" if conditional else ""
    if levels == 256:
        data = f"the 8-bit values (256 levels per sub-pixel){given}"
    else:
        data = (
            f"the image quantised to {levels} levels per sub-pixel{given}, not the 8-bit "
            f"image: bpd is at most log2({levels}) = {math.log2(levels):.3g}, not comparable "
            f"with 8-bit figures"
        )
    return {
        "estimator": f"exact: sum over sub-pixels of the {levels}-way softmax's cross-entropy",
        "data": data,
        "dequantization": "none (a discrete model)",
    }


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
