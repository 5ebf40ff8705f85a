"""DCGAN networks (Radford et al. 2016): transposed convolutions up, strided convolutions down.

Both networks are sized from the image side: the generator starts from a 4x4 map and doubles it
until the image size; the discriminator mirrors it. The channel count doubles each time the
map halves (``width`` at the image end, capped by ``max_width``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genctl.errors import BadInput
from genctl.spec import DataInfo


def upsamplings(image_size: int) -> int:
    """How many 2x steps lead from 4x4 to ``image_size`` (a power of two >= 8)."""
    n = image_size.bit_length() - 1
    if image_size < 8 or 2**n != image_size:
        raise BadInput(
            f"dcgan: data.image_size {image_size} is not supported",
            "DCGAN's networks double or halve the image at each layer: use a power of two >= 8 "
            "(8, 16, 32, 64, 128, ...).",
        )
    return n - 2


def _widths(width: int, n: int, max_width: int) -> list[int]:
    """Channels of the feature maps from 4x4 up to image_size/2 (the widest first)."""
    return [min(width * 2**i, max_width) for i in reversed(range(n))]


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "layer":  # one group: normalise over C, H, W of each sample
        return nn.GroupNorm(1, channels)
    return nn.Identity()


def one_hot(labels: torch.Tensor, num_classes: int, like: torch.Tensor) -> torch.Tensor:
    return F.one_hot(labels, num_classes).to(dtype=like.dtype)


class Generator(nn.Module):
    """z (+ one-hot label) -> ConvTranspose/BatchNorm/ReLU blocks -> Tanh image in [-1, 1]."""

    def __init__(
        self,
        latent_dim: int,
        channels: int,
        image_size: int,
        width: int = 64,
        max_width: int = 1024,
        num_classes: int = 0,
    ):
        super().__init__()
        self.latent_dim, self.num_classes = latent_dim, num_classes
        widths = _widths(width, upsamplings(image_size), max_width)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(latent_dim + num_classes, widths[0], 4, 1, 0, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(True),
        ]
        for c_in, c_out in zip(widths, widths[1:], strict=False):
            layers += [
                nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(True),
            ]
        layers += [nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.num_classes:
            z = torch.cat([z, one_hot(labels, self.num_classes, z)], dim=1)
        return self.net(z[:, :, None, None])


class Discriminator(nn.Module):
    """Image (+ label channels) -> strided Conv/norm/LeakyReLU blocks -> one logit per image.

    For the Wasserstein losses it is the critic: the same network, its output read as a score.
    """

    def __init__(
        self,
        channels: int,
        image_size: int,
        width: int = 64,
        max_width: int = 1024,
        norm: str = "batch",
        num_classes: int = 0,
    ):
        super().__init__()
        self.num_classes = num_classes
        widths = _widths(width, upsamplings(image_size), max_width)[::-1]
        layers: list[nn.Module] = [  # no normalisation on the first layer (DCGAN paper)
            nn.Conv2d(channels + num_classes, widths[0], 4, 2, 1),
            nn.LeakyReLU(0.2, True),
        ]
        for c_in, c_out in zip(widths, widths[1:], strict=False):
            layers += [
                nn.Conv2d(c_in, c_out, 4, 2, 1, bias=norm == "none"),
                _norm(norm, c_out),
                nn.LeakyReLU(0.2, True),
            ]
        layers += [nn.Conv2d(widths[-1], 1, 4, 1, 0)]  # 4x4 -> 1x1
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.num_classes:
            maps = one_hot(labels, self.num_classes, x)[:, :, None, None]
            x = torch.cat([x, maps.expand(-1, -1, *x.shape[2:])], dim=1)
        return self.net(x).flatten()


def dcgan_init(module: nn.Module) -> None:
    """Weights from N(0, 0.02), norm scales from N(1, 0.02), biases 0 (DCGAN paper, sec. 4)."""
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d | nn.InstanceNorm2d | nn.GroupNorm) and module.affine:
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def build(config, data: DataInfo) -> dict[str, nn.Module]:
    """The generator and the discriminator (critic) for ``data``."""
    if config.conditional and data.num_classes < 1:
        raise BadInput(
            "dcgan: model.conditional is true but the data has no class labels",
            "Use labelled data (mnist, cifar10, or an image folder with one sub-folder per class "
            "and data.labels: true), or set model.conditional: false.",
        )
    classes = data.num_classes if config.conditional else 0
    nets = {
        "generator": Generator(
            config.latent_dim,
            data.channels,
            data.image_size,
            config.g_width,
            config.max_width,
            classes,
        ),
        "discriminator": Discriminator(
            data.channels, data.image_size, config.d_width, config.max_width, config.d_norm, classes
        ),
    }
    for net in nets.values():
        net.apply(dcgan_init)
    return nets
