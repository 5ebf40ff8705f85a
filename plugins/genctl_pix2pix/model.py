"""Pix2Pix's networks (Isola et al. 2017, appendix 6.1).

Generator ``generator``: a U-Net, encoder C64-C128-C256-C512-C512-C512-C512-C512 (4x4 stride-2
convolutions) mirrored by a decoder, each decoder layer also seeing the encoder layer of the same
resolution (skip connections carry the low-level structure, e.g. edges, straight across).
Discriminator ``discriminator``: the 70x70 PatchGAN on the input image and an output image
concatenated along channels, so it judges whether the output fits *this* input.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from genctl.errors import BadInput
from genctl.spec import DataInfo

from .config import Pix2PixConfig


def norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    return nn.BatchNorm2d(channels)


def encoder_block(c_in: int, c_out: int, norm: str | None) -> nn.Sequential:
    """LeakyReLU(0.2), 4x4 stride-2 conv, norm (the first block has no activation before it)."""
    layers: list[nn.Module] = [nn.LeakyReLU(0.2, True)]
    layers.append(nn.Conv2d(c_in, c_out, 4, 2, 1, bias=norm is None))
    if norm:
        layers.append(norm_layer(norm, c_out))
    return nn.Sequential(*layers)


def decoder_block(c_in: int, c_out: int, norm: str, dropout: bool) -> nn.Sequential:
    """ReLU, 4x4 stride-2 transposed conv, norm, dropout 0.5."""
    layers = [nn.ReLU(True), nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False)]
    layers.append(norm_layer(norm, c_out))
    if dropout:
        layers.append(nn.Dropout(0.5))
    return nn.Sequential(*layers)


class UNet(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, ngf: int, downs: int, norm: str, dropout: bool):
        super().__init__()
        chans = [ngf * min(2**i, 8) for i in range(downs)]
        self.encoder = nn.ModuleList([nn.Conv2d(in_ch, chans[0], 4, 2, 1)])
        for i in range(1, downs):
            innermost = i == downs - 1  # the 1x1 bottleneck is not normalised
            self.encoder.append(encoder_block(chans[i - 1], chans[i], None if innermost else norm))
        self.decoder = nn.ModuleList()
        for i in reversed(range(1, downs)):
            c_in = chans[i] if i == downs - 1 else 2 * chans[i]
            # Dropout in the 512-wide blocks below the bottleneck, the paper's "CD512" layers.
            self.decoder.append(
                decoder_block(c_in, chans[i - 1], norm, dropout and 4 <= i < downs - 1)
            )
        last = nn.ConvTranspose2d(2 * chans[0], out_ch, 4, 2, 1)
        self.decoder.append(nn.Sequential(nn.ReLU(True), last, nn.Tanh()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        skips.pop()  # the bottleneck feeds the decoder directly
        for block in self.decoder:
            x = block(x)
            if skips:
                x = torch.cat([skips.pop(), x], 1)
        return x


class PatchGAN(nn.Module):
    """Scores (logits) for overlapping patches of ``cat(input, output)``."""

    def __init__(self, in_ch: int, ndf: int, layers: int, norm: str):
        super().__init__()
        seq: list[nn.Module] = [nn.Conv2d(in_ch, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        ch = ndf
        for n in range(1, layers + 1):
            out = ndf * min(2**n, 8)
            stride = 2 if n < layers else 1
            seq += [nn.Conv2d(ch, out, 4, stride, 1, bias=False), norm_layer(norm, out)]
            seq.append(nn.LeakyReLU(0.2, True))
            ch = out
        seq.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.net = nn.Sequential(*seq)

    def forward(self, condition: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([condition, image], 1))


def build_networks(config: Pix2PixConfig, info: DataInfo) -> dict[str, nn.Module]:
    size = info.image_size
    downs = config.unet_downs or int(math.log2(size))
    if size % 2**downs:
        raise BadInput(
            f"pix2pix's U-Net with {downs} downsamplings needs data.image_size to be a multiple "
            f"of {2**downs}; it is {size}",
            "Set data.image_size to a power of two (256 is the paper's), or model.unet_downs lower.",
        )
    # Each stride-2 layer halves the side; the two stride-1 4x4 layers take 2 more pixels off.
    if size // 2**config.d_layers - 2 < 1:
        raise BadInput(
            f"model.d_layers={config.d_layers} is too deep for {size}x{size} images "
            "(the PatchGAN would have no patches left)",
            "Lower model.d_layers or raise data.image_size.",
        )
    c = info.channels
    nets = {
        "generator": UNet(c, c, config.ngf, downs, config.norm, config.dropout),
        "discriminator": PatchGAN(2 * c, config.ndf, config.d_layers, config.norm),
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
    elif isinstance(m, nn.BatchNorm2d | nn.InstanceNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)
