"""The denoising UNet (Ho et al. 2020, appendix B; Ronneberger et al. 2015 for the U shape).

Levels of residual blocks halve the resolution on the way down and double it on the way up, with
skip connections between levels of the same size. Every residual block receives the timestep
embedding (sinusoidal, as in the Transformer, then an MLP), plus, for a class-conditional model,
a learned class embedding added to it. Self-attention runs at the chosen feature-map sizes and in
the middle. The net predicts the noise (or v) at ``x_t``; the schedule lives in ``scheduler.py``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genctl.errors import BadInput
from genctl.spec import DataInfo
from genctl_ddpm.config import DDPMConfig


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps: N -> N x dim."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, dim % 2))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the time(+class) embedding added in between."""

    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, cout)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        # ``emb`` arrives through SiLU already (once for all blocks, see UNet.embed). The in-place
        # adds are safe: a convolution's backward needs its input, not its output.
        h = self.conv1(F.silu(self.norm1(x)))
        h += self.emb(emb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return h.add_(self.skip(x))


class SelfAttention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, residual."""

    def __init__(self, channels: int, heads: int, groups: int) -> None:
        super().__init__()
        self.heads = heads  # DDPMConfig checks that it divides every width
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Linear(channels, 3 * channels)  # one matmul for q, k and v
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # n x hw x c
        # heads split so that each head's features are contiguous: the layout the fused
        # (flash) attention kernels take; a strided layout falls back to the slow math path
        qkv = self.qkv(tokens).view(n, h * w, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each n x heads x hw x d
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, h * w, c)
        return x + self.proj(out).transpose(1, 2).reshape(n, c, h, w)


class UNet(nn.Module):
    """``forward(x, t, label=None)``: the predicted noise (or v), shaped like ``x``.

    ``label``: class indices for a class-conditional net; ``None`` or the index ``num_classes``
    means "no class" (the null class classifier-free guidance trains with label dropout).
    """

    def __init__(
        self, config: DDPMConfig, channels: int, image_size: int, num_classes: int = 0
    ) -> None:
        super().__init__()
        base, groups = config.base_channels, config.norm_groups
        emb_dim = 4 * base
        self.base_channels = base
        self.num_classes = num_classes
        self.time_mlp = nn.Sequential(
            nn.Linear(base, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        # the extra row is the null class
        self.class_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None

        def block(cin: int, cout: int, size: int) -> nn.ModuleList:
            attn = size in config.attention_resolutions
            return nn.ModuleList(
                [
                    ResBlock(cin, cout, emb_dim, groups, config.dropout),
                    SelfAttention(cout, config.attention_heads, groups) if attn else nn.Identity(),
                ]
            )

        self.conv_in = nn.Conv2d(channels, base, 3, padding=1)
        self.down = nn.ModuleList()
        skips, ch, size = [base], base, image_size
        last = len(config.channel_mults) - 1
        for level, mult in enumerate(config.channel_mults):
            for _ in range(config.num_res_blocks):
                self.down.append(block(ch, base * mult, size))
                ch = base * mult
                skips.append(ch)
            if level != last:
                self.down.append(nn.ModuleList([nn.Conv2d(ch, ch, 3, stride=2, padding=1)]))
                skips.append(ch)
                size //= 2
        self.mid = nn.ModuleList(
            [
                ResBlock(ch, ch, emb_dim, groups, config.dropout),
                SelfAttention(ch, config.attention_heads, groups),
                ResBlock(ch, ch, emb_dim, groups, config.dropout),
            ]
        )
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mults))):
            for _ in range(config.num_res_blocks + 1):
                self.up.append(block(ch + skips.pop(), base * mult, size))
                ch = base * mult
            if level != 0:
                self.up.append(
                    nn.ModuleList(
                        [
                            nn.Upsample(scale_factor=2, mode="nearest"),
                            nn.Conv2d(ch, ch, 3, padding=1),
                        ]
                    )
                )
                size *= 2
        self.norm_out = nn.GroupNorm(groups, ch)
        self.conv_out = nn.Conv2d(ch, channels, 3, padding=1)

    def embed(self, t: Tensor, label: Tensor | None) -> Tensor:
        """SiLU(time embedding + class embedding): what every residual block projects and adds."""
        emb = self.time_mlp(timestep_embedding(t, self.base_channels))
        if self.class_emb is not None:
            if label is None:
                label = torch.full_like(t, self.num_classes, dtype=torch.long)
            emb = emb + self.class_emb(label)
        return F.silu(emb)

    def forward(self, x: Tensor, t: Tensor, label: Tensor | None = None) -> Tensor:
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        emb = self.embed(t.to(x.device), label)
        h = self.conv_in(x)
        hs = [h]
        for layers in self.down:
            if isinstance(layers[0], ResBlock):
                h = layers[1](layers[0](h, emb))
            else:  # downsample
                h = layers[0](h)
            hs.append(h)
        h = self.mid[0](h, emb)
        h = self.mid[1](h)
        h = self.mid[2](h, emb)
        for layers in self.up:
            if isinstance(layers[0], ResBlock):
                h = layers[1](layers[0](torch.cat([h, hs.pop()], dim=1), emb))
            else:  # upsample
                h = layers[1](layers[0](h))
        return self.conv_out(F.silu(self.norm_out(h)))


def build_networks(config: DDPMConfig, info: DataInfo) -> dict[str, nn.Module]:
    """The UNet for this data, checked against it: ``{"unet": UNet}``."""
    levels = len(config.channel_mults)
    factor = 2 ** (levels - 1)
    if info.image_size % factor:
        raise BadInput(
            f"image size {info.image_size} cannot be halved {levels - 1} times "
            f"(model.channel_mults has {levels} levels)",
            f"Use data.image_size divisible by {factor}, or fewer model.channel_mults.",
        )
    if config.conditional and not info.num_classes:
        raise BadInput(
            "model.conditional=true needs class labels, but the data has none",
            "Use labelled data (mnist, cifar10, or a folder with one sub-folder per class).",
        )
    num_classes = info.num_classes if config.conditional else 0
    return {"unet": UNet(config, info.channels, info.image_size, num_classes)}
