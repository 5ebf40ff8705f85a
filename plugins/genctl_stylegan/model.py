"""StyleGAN networks (Karras et al. 2019, "A Style-Based Generator Architecture for GANs").

Generator = mapping network (z -> w, an MLP) + synthesis network. The synthesis network starts
from a learned constant 4x4 map; every layer is conv -> per-pixel noise (learned per-channel
scale) -> LReLU -> AdaIN, where AdaIN normalises each channel of each image (instance norm) and
then scales and shifts it with a per-layer affine map of w. Two layers per resolution, so a
64x64 generator has 10 style inputs ``ws`` (N x 10 x w_dim): style mixing and truncation act on
that tensor. The discriminator is ProGAN's critic (the paper keeps it) at full resolution.
"""

from __future__ import annotations

import torch
from genctl_progan.layers import EqualConv2d, EqualLinear, channels_at, log2_size, pixel_norm
from genctl_progan.model import Critic, lrelu, upsample
from torch import nn

from genctl.spec import DataInfo

NOISE_SEED = 1234  # the fixed per-layer noise maps of noise=const are drawn from this seed


def instance_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Each channel of each image to zero mean and unit variance over its pixels."""
    x = x - x.mean(dim=(2, 3), keepdim=True)
    return x * torch.rsqrt(x.pow(2).mean(dim=(2, 3), keepdim=True) + eps)


class MappingNetwork(nn.Module):
    """z -> pixel norm -> ``layers`` x (dense, LReLU) -> w."""

    def __init__(self, z_dim: int, w_dim: int, layers: int = 8, lr_mul: float = 0.01):
        super().__init__()
        dims = [z_dim] + [w_dim] * layers
        self.layers = nn.ModuleList(
            EqualLinear(a, b, lr_mul=lr_mul) for a, b in zip(dims, dims[1:], strict=False)
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = pixel_norm(z)
        for layer in self.layers:
            x = lrelu(layer(x))
        return x


class AdaIN(nn.Module):
    """Instance norm, then a per-channel scale and bias computed from w by a learned affine map."""

    def __init__(self, channels: int, w_dim: int):
        super().__init__()
        self.style = EqualLinear(w_dim, 2 * channels, gain=1.0)
        with torch.no_grad():
            self.style.bias[:channels] = 1.0  # scale starts at 1, bias at 0

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        scale, bias = self.style(w)[:, :, None, None].chunk(2, dim=1)
        return instance_norm(x) * scale + bias


class StyleLayer(nn.Module):
    """(upsample) -> 3x3 conv (or only a bias, on the constant input) -> noise -> LReLU -> AdaIN."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        resolution: int,
        w_dim: int,
        conv: bool = True,
        up: bool = False,
        index: int = 0,
    ):
        super().__init__()
        self.up, self.resolution = up, resolution
        self.conv = EqualConv2d(in_channels, out_channels, 3) if conv else None
        self.bias = None if conv else nn.Parameter(torch.zeros(out_channels))
        self.noise_strength = nn.Parameter(torch.zeros(out_channels))  # learned, per channel
        fixed = torch.Generator().manual_seed(NOISE_SEED + index)
        self.register_buffer(
            "noise_const", torch.randn(1, 1, resolution, resolution, generator=fixed)
        )
        self.adain = AdaIN(out_channels, w_dim)

    def forward(
        self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.up:
            x = upsample(x)
        x = self.conv(x) if self.conv is not None else x + self.bias[None, :, None, None]
        if noise is None:
            noise = torch.randn(
                len(x), 1, self.resolution, self.resolution, device=x.device, dtype=x.dtype
            )
        x = x + self.noise_strength[None, :, None, None] * noise
        return self.adain(lrelu(x), w)


class SynthesisNetwork(nn.Module):
    """ws (N x num_ws x w_dim) -> image. Starts from a learned constant."""

    def __init__(
        self, w_dim: int, channels: int, log2_size: int, channel_base: int, max_channels: int
    ):
        super().__init__()
        self.resolutions = [2**k for k in range(2, log2_size + 1)]
        ch = [channels_at(r, channel_base, max_channels) for r in self.resolutions]
        self.const = nn.Parameter(torch.ones(1, ch[0], 4, 4))
        layers = [
            StyleLayer(ch[0], ch[0], 4, w_dim, conv=False, index=0),
            StyleLayer(ch[0], ch[0], 4, w_dim, index=1),
        ]
        for i, r in enumerate(self.resolutions[1:], start=1):
            layers.append(StyleLayer(ch[i - 1], ch[i], r, w_dim, up=True, index=len(layers)))
            layers.append(StyleLayer(ch[i], ch[i], r, w_dim, index=len(layers)))
        self.layers = nn.ModuleList(layers)
        self.to_rgb = EqualConv2d(ch[-1], channels, 1, gain=1.0)

    @property
    def num_ws(self) -> int:
        return len(self.layers)

    def const_noise(self) -> list[torch.Tensor]:
        """The fixed noise maps (noise=const), one per layer."""
        return [layer.noise_const for layer in self.layers]

    def forward(self, ws: torch.Tensor, noise: list[torch.Tensor] | None = None) -> torch.Tensor:
        x = self.const.expand(len(ws), -1, -1, -1)
        for i, layer in enumerate(self.layers):
            x = layer(x, ws[:, i], None if noise is None else noise[i])
        return self.to_rgb(x)


class Generator(nn.Module):
    """Mapping + synthesis, and ``w_avg``: the running mean of w that truncation pulls towards."""

    def __init__(
        self,
        z_dim: int,
        w_dim: int,
        channels: int,
        log2_size: int,
        mapping_layers: int = 8,
        mapping_lr_mul: float = 0.01,
        channel_base: int = 16384,
        max_channels: int = 512,
    ):
        super().__init__()
        self.z_dim, self.w_dim = z_dim, w_dim
        self.mapping = MappingNetwork(z_dim, w_dim, mapping_layers, mapping_lr_mul)
        self.synthesis = SynthesisNetwork(w_dim, channels, log2_size, channel_base, max_channels)
        self.register_buffer("w_avg", torch.zeros(w_dim))

    @property
    def num_ws(self) -> int:
        return self.synthesis.num_ws

    def broadcast(self, w: torch.Tensor) -> torch.Tensor:
        """One w per image -> the same w for every layer (N x num_ws x w_dim)."""
        return w[:, None, :].expand(-1, self.num_ws, -1)

    def truncate(
        self, ws: torch.Tensor, psi: float = 1.0, cutoff: int | None = None
    ) -> torch.Tensor:
        """The truncation trick: pull w towards ``w_avg`` by ``psi`` in layers below ``cutoff``."""
        if psi == 1.0:
            return ws
        pulled = torch.lerp(self.w_avg.to(ws.dtype), ws, psi)
        if cutoff is None or cutoff >= self.num_ws:
            return pulled
        layers = torch.arange(self.num_ws, device=ws.device)[None, :, None]
        return torch.where(layers < cutoff, pulled, ws)

    @torch.no_grad()
    def update_w_avg(self, w: torch.Tensor, beta: float) -> None:
        self.w_avg.copy_(torch.lerp(w.detach().float().mean(dim=0), self.w_avg, beta))

    def forward(
        self,
        z: torch.Tensor,
        truncation: float = 1.0,
        truncation_cutoff: int | None = None,
        noise: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        ws = self.truncate(self.broadcast(self.mapping(z)), truncation, truncation_cutoff)
        return self.synthesis(ws, noise)


def mix_styles(
    w1: torch.Tensor, w2: torch.Tensor, crossover: torch.Tensor, num_ws: int
) -> torch.Tensor:
    """Style mixing: image i takes ``w1[i]`` in layers below ``crossover[i]`` and ``w2[i]`` from
    there on. A crossover of ``num_ws`` (or more) keeps ``w1`` everywhere."""
    layers = torch.arange(num_ws, device=w1.device)[None, :, None]
    return torch.where(layers < crossover[:, None, None], w1[:, None, :], w2[:, None, :])


def build(config, data: DataInfo) -> dict[str, nn.Module]:
    """The style-based generator and ProGAN's critic as discriminator, at ``data.image_size``."""
    n = log2_size(data.image_size, "stylegan")
    widths = (config.channel_base, config.max_channels)
    generator = Generator(
        config.z_dim,
        config.w_dim,
        data.channels,
        n,
        config.mapping_layers,
        config.mapping_lr_mul,
        *widths,
    )
    return {
        "generator": generator,
        "discriminator": Critic(
            data.channels, n, *widths, mbstd_group=config.mbstd_group, progressive=False
        ),
    }
