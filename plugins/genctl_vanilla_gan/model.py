"""The MLP GAN: fully connected generator and discriminator on flattened images.

Generator block: Linear, BatchNorm, ReLU; then Linear and Tanh to the image.
Discriminator block: Linear, LeakyReLU(0.2); then Linear to one logit (the sigmoid is in the loss).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genctl.errors import BadInput
from genctl.spec import DataInfo


class Generator(nn.Module):
    def __init__(
        self, latent_dim: int, hidden: list[int], shape: tuple[int, int, int], num_classes: int = 0
    ):
        super().__init__()
        self.latent_dim, self.num_classes, self.shape = latent_dim, num_classes, shape
        layers: list[nn.Module] = []
        width = latent_dim + num_classes
        for h in hidden:
            layers += [nn.Linear(width, h), nn.BatchNorm1d(h), nn.ReLU(True)]
            width = h
        layers += [nn.Linear(width, shape[0] * shape[1] * shape[2]), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.num_classes:
            z = torch.cat([z, F.one_hot(labels, self.num_classes).to(z.dtype)], dim=1)
        return self.net(z).view(-1, *self.shape)


class Discriminator(nn.Module):
    def __init__(self, hidden: list[int], shape: tuple[int, int, int], num_classes: int = 0):
        super().__init__()
        self.num_classes = num_classes
        layers: list[nn.Module] = []
        width = shape[0] * shape[1] * shape[2] + num_classes
        for h in hidden:
            layers += [nn.Linear(width, h), nn.LeakyReLU(0.2, True)]
            width = h
        layers += [nn.Linear(width, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = x.flatten(1)
        if self.num_classes:  # for an MLP, appending the one-hot = appending label channels
            x = torch.cat([x, F.one_hot(labels, self.num_classes).to(x.dtype)], dim=1)
        return self.net(x).flatten()


def build(config, data: DataInfo) -> dict[str, nn.Module]:
    if config.conditional and data.num_classes < 1:
        raise BadInput(
            "vanilla_gan: model.conditional is true but the data has no class labels",
            "Use labelled data (mnist, cifar10, or an image folder with one sub-folder per class "
            "and data.labels: true), or set model.conditional: false.",
        )
    shape = (data.channels, data.image_size, data.image_size)
    classes = data.num_classes if config.conditional else 0
    return {
        "generator": Generator(config.latent_dim, config.g_hidden, shape, classes),
        "discriminator": Discriminator(config.d_hidden, shape, classes),
    }
