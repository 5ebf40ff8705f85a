"""SRGAN's networks (Ledig et al. 2017, figure 4).

Generator ``generator`` (SRResNet): a 9x9 convolution, B residual blocks (conv-BN-PReLU-conv-BN)
inside one long skip connection, then log2(scale) sub-pixel upsampling blocks (a 3x3 convolution
to 4x the channels, pixel shuffle x2, PReLU) and a 9x9 convolution back to image channels.

Discriminator ``discriminator``: eight 3x3 convolutions, 64 to 512 filters, stride 2 every other
layer, batch norm and LeakyReLU(0.2), then dense 1024, LeakyReLU, dense 1 (a logit). The paper
flattens the 6x6 map of its 96x96 crops into the dense layer; we average-pool it to 1x1 first,
so the discriminator takes any image size and stays small.
"""

from __future__ import annotations

import torch
from torch import nn

from genctl.errors import BadInput
from genctl.spec import DataInfo

from .config import SRGANConfig


class ResidualBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(ch, ch, 3, 1, 1),
            nn.BatchNorm2d(ch),
            nn.PReLU(),
            nn.Conv2d(ch, ch, 3, 1, 1),
            nn.BatchNorm2d(ch),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SRResNet(nn.Module):
    def __init__(self, img_ch: int, ch: int, blocks: int, scale: int):
        super().__init__()
        self.head = nn.Sequential(nn.Conv2d(img_ch, ch, 9, 1, 4), nn.PReLU())
        self.body = nn.Sequential(
            *[ResidualBlock(ch) for _ in range(blocks)],
            nn.Conv2d(ch, ch, 3, 1, 1),
            nn.BatchNorm2d(ch),
        )
        ups: list[nn.Module] = []
        for _ in range(scale.bit_length() - 1):  # log2(scale) x2 steps
            ups += [nn.Conv2d(ch, 4 * ch, 3, 1, 1), nn.PixelShuffle(2), nn.PReLU()]
        self.upsample = nn.Sequential(*ups)
        self.tail = nn.Conv2d(ch, img_ch, 9, 1, 4)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        h = self.head(lr)
        return self.tail(self.upsample(h + self.body(h)))


class Discriminator(nn.Module):
    def __init__(self, img_ch: int, ndf: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(img_ch, ndf, 3, 1, 1), nn.LeakyReLU(0.2, True)]
        ch = ndf
        for i in range(7):  # k3n64s2, k3n128s1, k3n128s2, ..., k3n512s2
            out = ndf * 2 ** ((i + 1) // 2)
            stride = 2 if i % 2 == 0 else 1
            layers += [
                nn.Conv2d(ch, out, 3, stride, 1),
                nn.BatchNorm2d(out),
                nn.LeakyReLU(0.2, True),
            ]
            ch = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(ch, 1024),
            nn.LeakyReLU(0.2, True),
            nn.Linear(1024, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_networks(config: SRGANConfig, info: DataInfo) -> dict[str, nn.Module]:
    scale = info.scale
    if scale < 2 or scale & (scale - 1):
        raise BadInput(
            f"srgan upsamples in x2 pixel-shuffle steps, so data.scale must be a power of two "
            f"(2, 4, 8); it is {scale}",
            "Set data.scale=4 (the paper's) or 2.",
        )
    if info.image_size % scale:
        raise BadInput(
            f"data.image_size={info.image_size} is not a multiple of data.scale={scale}",
            "Choose an HR size divisible by the scale, e.g. data.image_size=96 with data.scale=4.",
        )
    if info.image_size < 16:
        raise BadInput(
            f"srgan's discriminator halves the image four times: data.image_size must be at "
            f"least 16; it is {info.image_size}",
            "Raise data.image_size (96 is the paper's HR crop).",
        )
    return {
        "generator": SRResNet(info.channels, config.channels, config.blocks, scale),
        "discriminator": Discriminator(info.channels, config.ndf),
    }
