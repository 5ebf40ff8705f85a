"""CycleGAN's networks (Zhu et al. 2017, appendix 7.2).

Two generators, ``g_ab`` (A -> B) and ``g_ba`` (B -> A), and two PatchGAN discriminators,
``d_a`` (real A vs translated-to-A) and ``d_b``. The generator is Johnson et al.'s ResNet:
c7s1-64, d128, d256, R256 x 6 or 9, u128, u64, c7s1-3 with reflection padding and instance
norm; a U-Net (pix2pix's) is the alternative. The discriminator is the 70x70 PatchGAN:
C64-C128-C256-C512, each output judges one overlapping patch.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from genctl.errors import BadInput
from genctl.spec import DataInfo

from .config import CycleGANConfig


def norm_layer(kind: str, channels: int) -> nn.Module:
    # Instance norm without learned affine, as in the paper's code; convolutions then keep biases.
    if kind == "instance":
        return nn.InstanceNorm2d(channels)
    return nn.BatchNorm2d(channels)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int, norm: str, dropout: bool, bias: bool):
        super().__init__()
        layers = [
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3, bias=bias),
            norm_layer(norm, channels),
            nn.ReLU(True),
        ]
        if dropout:
            layers.append(nn.Dropout(0.5))
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=bias)]
        layers.append(norm_layer(norm, channels))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """c7s1-ngf, two stride-2 downsamplings, ``blocks`` residual blocks, two upsamplings."""

    def __init__(self, in_ch: int, out_ch: int, ngf: int, blocks: int, norm: str, dropout: bool):
        super().__init__()
        bias = norm == "instance"
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_ch, ngf, 7, bias=bias),
            norm_layer(norm, ngf),
            nn.ReLU(True),
        ]
        ch = ngf
        for _ in range(2):
            layers += [
                nn.Conv2d(ch, ch * 2, 3, 2, 1, bias=bias),
                norm_layer(norm, ch * 2),
                nn.ReLU(True),
            ]
            ch *= 2
        layers += [ResidualBlock(ch, norm, dropout, bias) for _ in range(blocks)]
        for _ in range(2):
            up = nn.ConvTranspose2d(ch, ch // 2, 3, 2, 1, output_padding=1, bias=bias)
            layers += [up, norm_layer(norm, ch // 2), nn.ReLU(True)]
            ch //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ch, out_ch, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class UnetGenerator(nn.Module):
    """pix2pix's U-Net: ``downs`` stride-2 convolutions, mirrored, with skip connections."""

    def __init__(self, in_ch: int, out_ch: int, ngf: int, downs: int, norm: str, dropout: bool):
        super().__init__()
        bias = norm == "instance"
        chans = [ngf * min(2**i, 8) for i in range(downs)]
        self.downs = nn.ModuleList()
        self.ups = nn.ModuleList()
        for i, c in enumerate(chans):
            if i == 0:  # outermost: no activation before, no norm after
                self.downs.append(nn.Conv2d(in_ch, c, 4, 2, 1, bias=bias))
                continue
            layers = [nn.LeakyReLU(0.2, True), nn.Conv2d(chans[i - 1], c, 4, 2, 1, bias=bias)]
            if i < downs - 1:  # the innermost (1x1 bottleneck) has no norm
                layers.append(norm_layer(norm, c))
            self.downs.append(nn.Sequential(*layers))
        for i, c in enumerate(chans):
            c_in = c if i == downs - 1 else 2 * c  # all but the innermost see the skip too
            if i == 0:
                layers = [nn.ReLU(True), nn.ConvTranspose2d(c_in, out_ch, 4, 2, 1), nn.Tanh()]
            else:
                up = nn.ConvTranspose2d(c_in, chans[i - 1], 4, 2, 1, bias=bias)
                layers = [nn.ReLU(True), up, norm_layer(norm, chans[i - 1])]
                if dropout and 4 <= i < downs - 1:  # the paper's dropout: the widest inner blocks
                    layers.append(nn.Dropout(0.5))
            self.ups.append(nn.Sequential(*layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for down in self.downs:
            x = down(x)
            skips.append(x)
        for i in reversed(range(len(self.ups))):
            x = self.ups[i](x)
            if i > 0:
                x = torch.cat([skips[i - 1], x], 1)
        return x


class PatchDiscriminator(nn.Module):
    """PatchGAN: a grid of real/fake scores, one per overlapping input patch (LSGAN: no sigmoid)."""

    def __init__(self, in_ch: int, ndf: int, layers: int, norm: str):
        super().__init__()
        bias = norm == "instance"
        seq: list[nn.Module] = [nn.Conv2d(in_ch, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        ch = ndf
        for n in range(1, layers + 1):
            out = ndf * min(2**n, 8)
            stride = 2 if n < layers else 1  # the last feature layer keeps the resolution
            seq += [nn.Conv2d(ch, out, 4, stride, 1, bias=bias), norm_layer(norm, out)]
            seq.append(nn.LeakyReLU(0.2, True))
            ch = out
        seq.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.net = nn.Sequential(*seq)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def patch_output_size(size: int, layers: int) -> int:
    """Side of the PatchGAN's score grid for ``size`` x ``size`` inputs."""
    for _ in range(layers):
        size = size // 2
    return size - 2  # two stride-1 4x4 convolutions with padding 1


def build_generator(config: CycleGANConfig, info: DataInfo) -> nn.Module:
    c, size = info.channels, info.image_size
    if config.generator == "unet":
        downs = config.unet_downs or int(math.log2(size))
        if size % 2**downs:
            raise BadInput(
                f"model.generator=unet with {downs} downsamplings needs the image size to be a "
                f"multiple of {2**downs}; data.image_size is {size}",
                "Set data.image_size to a power of two, or model.unet_downs lower.",
            )
        return UnetGenerator(c, c, config.ngf, downs, config.norm, config.dropout)
    if size % 4:
        raise BadInput(
            f"model.generator={config.generator} downsamples twice, so data.image_size must be "
            f"a multiple of 4; it is {size}",
            "Set data.image_size to a multiple of 4 (128 and 256 are the usual).",
        )
    blocks = 9 if config.generator == "resnet_9blocks" else 6
    return ResnetGenerator(c, c, config.ngf, blocks, config.norm, config.dropout)


def build_discriminator(config: CycleGANConfig, info: DataInfo) -> nn.Module:
    if patch_output_size(info.image_size, config.d_layers) < 1:
        need = next(s for s in range(4, 4096, 4) if patch_output_size(s, config.d_layers) >= 1)
        raise BadInput(
            f"model.d_layers={config.d_layers} needs images of at least {need} px; "
            f"data.image_size is {info.image_size}",
            "Lower model.d_layers or raise data.image_size.",
        )
    return PatchDiscriminator(info.channels, config.ndf, config.d_layers, config.norm)


def build_networks(config: CycleGANConfig, info: DataInfo) -> dict[str, nn.Module]:
    """``g_ab``/``g_ba`` translate A -> B and B -> A; ``d_a``/``d_b`` judge domains A and B."""
    nets = {
        "g_ab": build_generator(config, info),
        "g_ba": build_generator(config, info),
        "d_a": build_discriminator(config, info),
        "d_b": build_discriminator(config, info),
    }
    for net in nets.values():
        net.apply(init_weights)
    return nets


def init_weights(m: nn.Module) -> None:
    """The paper's initialisation: weights from N(0, 0.02), norm scales from N(1, 0.02)."""
    if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d | nn.InstanceNorm2d) and m.weight is not None:
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)
