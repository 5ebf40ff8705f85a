"""ProGAN networks (Karras et al. 2018, "Progressive Growing of GANs").

Both networks are built at the final resolution from the start; ``depth`` says how many blocks
are in use (0: 4x4 only) and ``alpha`` how far the newest block has faded in. While a block fades
in, the generator blends the upsampled output of the previous resolution with the new block's
output, and the critic blends the average-pooled image through the previous ``from_rgb`` with the
new block's path. Nearest-neighbour upsampling, average-pool downsampling, no batch norm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genctl.spec import DataInfo
from genctl_progan.layers import (
    HE_GAIN,
    EqualConv2d,
    EqualLinear,
    channels_at,
    log2_size,
    minibatch_stddev,
    pixel_norm,
)


def lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


def upsample(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    return F.interpolate(x, scale_factor=factor, mode="nearest")


def downsample(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    return F.avg_pool2d(x, factor)


class GeneratorBlock(nn.Module):
    """Double the resolution: nearest upsample, then two 3x3 convs, each LReLU + pixel norm."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = EqualConv2d(in_channels, out_channels, 3)
        self.conv2 = EqualConv2d(out_channels, out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pixel_norm(lrelu(self.conv1(upsample(x))))
        return pixel_norm(lrelu(self.conv2(x)))


class Generator(nn.Module):
    """z -> 4x4 -> ... -> image (linear output, about [-1, 1]).

    The buffers ``depth`` and ``alpha`` record the growth stage the objective last trained at, so
    that a sampler rebuilt from saved weights draws at that stage. ``forward`` takes the stage as
    arguments (plain Python numbers: reading a buffer would wait on the device).
    """

    def __init__(
        self,
        latent_dim: int,
        channels: int,
        log2_size: int,
        channel_base: int = 16384,
        max_channels: int = 512,
    ):
        super().__init__()
        self.latent_dim = latent_dim
        self.resolutions = [2**k for k in range(2, log2_size + 1)]
        ch = [channels_at(r, channel_base, max_channels) for r in self.resolutions]
        self.base_channels = ch[0]
        # The paper's first layer is a 4x4 "transposed conv" of z, i.e. a dense layer.
        self.input = EqualLinear(latent_dim, ch[0] * 16, gain=HE_GAIN / 4)
        self.conv = EqualConv2d(ch[0], ch[0], 3)
        self.blocks = nn.ModuleList(GeneratorBlock(a, b) for a, b in zip(ch, ch[1:], strict=False))
        self.to_rgb = nn.ModuleList(EqualConv2d(c, channels, 1, gain=1.0) for c in ch)
        self.register_buffer("depth", torch.tensor(len(ch) - 1))
        self.register_buffer("alpha", torch.tensor(1.0))

    @property
    def max_depth(self) -> int:
        return len(self.resolutions) - 1

    def set_stage(self, depth: int, alpha: float) -> None:
        """Record the growth stage in the buffers (saved with the weights)."""
        self.depth.fill_(depth)
        self.alpha.fill_(alpha)

    def stage(self) -> tuple[int, float]:
        """The recorded growth stage (reads the buffers: not for the training loop)."""
        return int(self.depth), float(self.alpha)

    def forward(
        self, z: torch.Tensor, depth: int | None = None, alpha: float = 1.0
    ) -> torch.Tensor:
        depth = self.max_depth if depth is None else depth
        x = self.input(pixel_norm(z)).view(len(z), self.base_channels, 4, 4)
        x = pixel_norm(lrelu(x))
        x = pixel_norm(lrelu(self.conv(x)))
        for block in self.blocks[: depth - 1] if depth > 0 else []:
            x = block(x)
        if depth == 0:
            return self.to_rgb[0](x)
        new = self.to_rgb[depth](self.blocks[depth - 1](x))
        if alpha >= 1.0:
            return new
        old = upsample(self.to_rgb[depth - 1](x))
        return torch.lerp(old, new, alpha)


class CriticBlock(nn.Module):
    """Halve the resolution: two 3x3 convs with LReLU, then 2x2 average pooling."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = EqualConv2d(in_channels, in_channels, 3)
        self.conv2 = EqualConv2d(in_channels, out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return downsample(lrelu(self.conv2(lrelu(self.conv1(x)))))


class Critic(nn.Module):
    """image -> ... -> 4x4 -> minibatch stddev, conv, dense, dense -> one score per image.

    StyleGAN uses this same critic at its full depth (``progressive=False``).
    """

    def __init__(
        self,
        channels: int,
        log2_size: int,
        channel_base: int = 16384,
        max_channels: int = 512,
        mbstd_group: int = 4,
        progressive: bool = True,
    ):
        super().__init__()
        self.resolutions = [2**k for k in range(2, log2_size + 1)]
        ch = [channels_at(r, channel_base, max_channels) for r in self.resolutions]
        self.mbstd_group = mbstd_group
        # One from_rgb per resolution it may be fed at; only the last when it never grows.
        inputs = range(len(ch)) if progressive else [len(ch) - 1]
        self.from_rgb = nn.ModuleDict(
            {str(self.resolutions[i]): EqualConv2d(channels, ch[i], 1) for i in inputs}
        )
        # blocks[i] takes resolution i+1 down to resolution i.
        self.blocks = nn.ModuleList(CriticBlock(b, a) for a, b in zip(ch, ch[1:], strict=False))
        self.conv = EqualConv2d(ch[0] + 1, ch[0], 3)
        self.dense = EqualLinear(ch[0] * 16, ch[0])
        self.out = EqualLinear(ch[0], 1, gain=1.0)

    @property
    def max_depth(self) -> int:
        return len(self.resolutions) - 1

    def forward(
        self, x: torch.Tensor, depth: int | None = None, alpha: float = 1.0
    ) -> torch.Tensor:
        depth = self.max_depth if depth is None else depth
        h = lrelu(self.from_rgb[str(4 << depth)](x))
        if depth > 0:
            h = self.blocks[depth - 1](h)
            if alpha < 1.0:
                old = lrelu(self.from_rgb[str(2 << depth)](downsample(x)))
                h = torch.lerp(old, h, alpha)
            for block in reversed(self.blocks[: depth - 1]):
                h = block(h)
        h = minibatch_stddev(h, self.mbstd_group)
        h = lrelu(self.conv(h))
        h = lrelu(self.dense(h.flatten(1)))
        return self.out(h).flatten()


def build(config, data: DataInfo) -> dict[str, nn.Module]:
    """The generator and the critic, built at ``data.image_size`` (a power of two >= 4)."""
    n = log2_size(data.image_size, "progan")
    widths = (config.channel_base, config.max_channels)
    return {
        "generator": Generator(config.latent_dim, data.channels, n, *widths),
        "critic": Critic(data.channels, n, *widths, mbstd_group=config.mbstd_group),
    }
