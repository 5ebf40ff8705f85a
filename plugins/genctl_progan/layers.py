"""The building blocks of Karras et al.'s progressive GAN, shared with StyleGAN (same authors).

* Equalized learning rate (ProGAN sec. 4.1): weights are initialised from N(0, 1) and scaled at
  every forward pass by the He constant ``gain / sqrt(fan_in)``, so every layer learns at the same
  speed under Adam whatever its fan-in.
* Pixelwise feature normalization (sec. 4.2): each pixel's feature vector scaled to unit mean
  square, after every generator convolution.
* Minibatch standard deviation (sec. 3): one extra critic channel holding the average standard
  deviation of the features across a group of images, so the critic can see a lack of variety.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from genctl.errors import BadInput

HE_GAIN = math.sqrt(2.0)  # for layers followed by a (leaky) ReLU


class EqualLinear(nn.Module):
    """A linear layer with equalized learning rate (and StyleGAN's learning-rate multiplier).

    ``lr_mul`` < 1 slows the layer down (StyleGAN's mapping network uses 0.01): the stored weight
    is ``N(0, 1/lr_mul)`` and the runtime scale includes ``lr_mul``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        gain: float = HE_GAIN,
        lr_mul: float = 1.0,
        bias_init: float = 0.0,
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), bias_init / lr_mul))
        self.scale = gain / math.sqrt(in_features) * lr_mul
        self.lr_mul = lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class EqualConv2d(nn.Module):
    """A same-padded convolution with equalized learning rate."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, gain: float = HE_GAIN
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.scale = gain / math.sqrt(in_channels * kernel_size * kernel_size)
        self.padding = kernel_size // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)


def pixel_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale each pixel's feature vector (dim 1) to unit mean square."""
    return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + eps)


def minibatch_stddev(x: torch.Tensor, group_size: int = 4) -> torch.Tensor:
    """Append one channel: the mean standard deviation of the features over each group of images.

    The batch is split into groups of ``group_size`` (the whole batch when it does not divide);
    every image of a group gets its group's value, broadcast over its pixels.
    """
    n, c, h, w = x.shape
    g = group_size if n % group_size == 0 else n
    y = x.float().reshape(g, n // g, c, h, w)  # sample i belongs to group i % (n // g)
    std = (y.var(dim=0, unbiased=False) + 1e-8).sqrt()  # (n//g, c, h, w)
    stat = std.mean(dim=(1, 2, 3)).to(x.dtype)  # (n//g,)
    stat = stat.repeat(g)[:, None, None, None].expand(n, 1, h, w)
    return torch.cat([x, stat], dim=1)


def channels_at(resolution: int, channel_base: int, max_channels: int) -> int:
    """Feature maps at ``resolution``: ``channel_base / resolution``, at most ``max_channels``."""
    return max(1, min(max_channels, channel_base // resolution))


def log2_size(image_size: int, family: str, smallest: int = 4) -> int:
    """log2 of ``image_size``, which must be a power of two >= ``smallest``."""
    n = image_size.bit_length() - 1
    if image_size < smallest or 2**n != image_size:
        raise BadInput(
            f"{family}: data.image_size {image_size} is not supported",
            f"The networks double the image from 4x4 at each block: use a power of two >= {smallest} "
            "(8, 16, 32, 64, 128, ...).",
        )
    return n
