"""Gated PixelCNN (van den Oord et al. 2016, "Conditional Image Generation with PixelCNN
Decoders"): an autoregressive model of p(x) = prod_i p(x_i | x_1 .. x_{i-1}) over the
sub-pixels in raster order (row by row, left to right, and R before G before B in a pixel).

Masked convolutions keep the order: the output at pixel (i, j) never sees (i, j) or any later
pixel. Two stacks do it without the "blind spot" of the original PixelCNN's masked 3x3
kernels: a *vertical* stack that sees every pixel of the rows above (within its receptive
field, left and right), and a *horizontal* stack that sees the pixels to the left in the
current row and takes the vertical stack's features in. The first layer is of mask type A
(it may not see the current pixel); every later layer of type B (it may see the features at
the current pixel, which only know earlier pixels).

Colour: the features of each stack are split into one group per image channel. Group g knows
the channels before g of the current pixel, and the logits of channel g are computed from
groups 0..g only, so R is predicted without seeing R, G with R, B with R and G.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genctl.errors import BadInput
from genctl.spec import DataInfo


def colour_groups(n: int, channels: int) -> Tensor:
    """The colour group (0 .. channels-1) of each of ``n`` feature channels, in equal runs."""
    return torch.arange(n) * channels // n


def centre_mask(in_groups: Tensor, out_groups: Tensor, mask_type: str) -> Tensor:
    """out x in connections allowed at the current pixel: from earlier colour groups only
    (type A), or from earlier and the same group (type B)."""
    if mask_type == "A":
        return out_groups[:, None] > in_groups[None, :]
    return out_groups[:, None] >= in_groups[None, :]


class MaskedConv2d(nn.Conv2d):
    """A convolution whose kernel is multiplied by a fixed 0/1 mask, after explicit
    (asymmetric) padding so the kernel lies above and to the left of the output pixel."""

    def __init__(
        self, c_in: int, c_out: int, kernel: tuple[int, int], pad: tuple[int, ...], mask: Tensor
    ):
        super().__init__(c_in, c_out, kernel)
        self.pad = pad
        self.register_buffer("mask", mask.to(self.weight.dtype), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(F.pad(x, self.pad), self.weight * self.mask, self.bias)


def vertical_conv(c_in: int, c_out: int, k: int, mask_type: str) -> MaskedConv2d:
    """A (k//2 + 1) x k kernel over rows i - k//2 .. i; type A drops row i itself."""
    c = k // 2
    mask = torch.ones(c_out, c_in, c + 1, k)
    if mask_type == "A":
        mask[:, :, c, :] = 0
    return MaskedConv2d(c_in, c_out, (c + 1, k), (c, c, c, 0), mask)


def horizontal_conv(
    c_in: int, c_out: int, k: int, mask_type: str, in_groups: Tensor, out_groups: Tensor
) -> MaskedConv2d:
    """A 1 x (k//2 + 1) kernel over columns j - k//2 .. j of row i; at column j (the current
    pixel) only the connections the colour groups allow."""
    c = k // 2
    mask = torch.ones(c_out, c_in, 1, c + 1)
    mask[:, :, 0, c] = centre_mask(in_groups, out_groups, mask_type)
    return MaskedConv2d(c_in, c_out, (1, c + 1), (c, 0, 0, 0), mask)


def pointwise_conv(in_groups: Tensor, out_groups: Tensor) -> MaskedConv2d:
    """A 1x1 convolution of type B: group g's outputs read groups 0..g."""
    mask = centre_mask(in_groups, out_groups, "B")[:, :, None, None]
    return MaskedConv2d(len(in_groups), len(out_groups), (1, 1), (0, 0, 0, 0), mask)


def gate(x: Tensor) -> Tensor:
    """tanh(a) * sigmoid(b) of the two halves of the channels (the gated activation unit)."""
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedLayer(nn.Module):
    """One layer of both stacks. The first (type A) reads the image and has no residual."""

    def __init__(self, c_in: int, width: int, k: int, channels: int, num_classes: int, first: bool):
        super().__init__()
        self.first = first
        mask_type = "A" if first else "B"
        in_groups = torch.arange(channels) if first else colour_groups(width, channels)
        groups = colour_groups(width, channels)
        gated_groups = torch.cat([groups, groups])  # tanh half and sigmoid half alike
        self.vertical = vertical_conv(c_in, 2 * width, k, mask_type)
        self.horizontal = horizontal_conv(c_in, 2 * width, k, mask_type, in_groups, gated_groups)
        # The vertical features know only the rows above: they may feed any colour group.
        self.link = nn.Conv2d(2 * width, 2 * width, 1)
        self.out = pointwise_conv(groups, groups)
        self.label = nn.Embedding(num_classes, 2 * width) if num_classes else None

    def forward(self, v: Tensor, h: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor]:
        v_pre = self.vertical(v)
        h_pre = self.horizontal(h) + self.link(v_pre)
        if self.label is not None:
            bias = self.label(labels)[:, :, None, None]
            v_pre, h_pre = v_pre + bias, h_pre + bias
        h_out = self.out(gate(h_pre))
        return gate(v_pre), (h_out if self.first else h + h_out)


class PixelCNN(nn.Module):
    """Image (levels scaled to [-1, 1]) -> logits N x levels x C x H x W."""

    def __init__(
        self,
        channels: int,
        levels: int = 256,
        width: int = 64,
        layers: int = 8,
        kernel_size: int = 3,
        first_kernel_size: int = 7,
        num_classes: int = 0,
    ):
        super().__init__()
        if width < channels:
            raise BadInput(
                f"pixelcnn: model.width {width} is below the {channels} image channels",
                "Each colour channel needs its own group of features: use width >= channels.",
            )
        self.channels, self.levels, self.num_classes = channels, levels, num_classes
        # How many rows above its own the output at a pixel sees: each vertical kernel reaches
        # k // 2 rows up. Sampling crops the image to these rows; nothing further up matters.
        self.context_rows = first_kernel_size // 2 + layers * (kernel_size // 2)
        self.layers = nn.ModuleList(
            [GatedLayer(channels, width, first_kernel_size, channels, num_classes, first=True)]
            + [
                GatedLayer(width, width, kernel_size, channels, num_classes, first=False)
                for _ in range(layers)
            ]
        )
        groups = colour_groups(width, channels)
        logit_groups = torch.arange(channels).repeat_interleave(levels)  # channel c's levels
        self.head = nn.Sequential(
            nn.ReLU(),
            pointwise_conv(groups, groups),
            nn.ReLU(),
            pointwise_conv(groups, logit_groups),
        )

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        if self.num_classes and labels is None:
            raise ValueError("this PixelCNN is class-conditional: give labels")
        v = h = x
        for layer in self.layers:
            v, h = layer(v, h, labels)
        n, _, height, w = x.shape
        return self.head(h).view(n, self.channels, self.levels, height, w).transpose(1, 2)

    def quantise(self, x: Tensor) -> Tensor:
        """Images in [-1, 1] -> integer levels 0 .. levels-1 (int64)."""
        return ((x.float() + 1) / 2 * (self.levels - 1)).round().clamp(0, self.levels - 1).long()

    def to_input(self, q: Tensor) -> Tensor:
        """Integer levels -> the network's input, levels spread evenly over [-1, 1]."""
        return q.float() / (self.levels - 1) * 2 - 1


def build(config, data: DataInfo) -> dict[str, nn.Module]:
    if config.conditional and data.num_classes < 1:
        raise BadInput(
            "pixelcnn: model.conditional is true but the data has no class labels",
            "Use labelled data (mnist, cifar10, or an image folder with one sub-folder per class "
            "and data.labels: true), or set model.conditional: false.",
        )
    net = PixelCNN(
        data.channels,
        config.levels,
        config.width,
        config.layers,
        config.kernel_size,
        config.first_kernel_size,
        data.num_classes if config.conditional else 0,
    )
    return {"pixelcnn": net}
