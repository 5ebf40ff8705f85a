"""Sampling from StyleGAN: plain samples, the style-mixing figure, latent interpolation.

The latent of seed ``s`` is the first z drawn from ``torch.Generator().manual_seed(s)``, so
``genctl sample --seeds 3`` and ``row_seeds=[3]`` show the same face (with ``noise=const``).
"""

from __future__ import annotations

import re
from typing import Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from genctl.errors import BadInput
from genctl.spec import DataInfo, Schema

BANDS = ("coarse", "middle", "fine")  # the paper's 4-8, 16-32 and 64-1024 pixel styles
DEFAULT_COLUMNS = 5  # mix mode without col_seeds: this many style latents from the generator


class StyleGANSamplerOptions(Schema):
    mode: Literal["sample", "mix", "interpolate"] = "sample"
    truncation: float = Field(1.0, ge=0)  # psi: 1 = no truncation, 0 = the average image
    truncation_cutoff: int | None = Field(None, ge=1)  # truncate only layers below this one
    noise: Literal["const", "random"] = "const"  # fixed per-layer noise maps, or fresh ones
    # mode=mix: the source latents down the first column, the style latents across the first row.
    row_seeds: list[int] | None = None  # default: n latents from --seed
    col_seeds: list[int] | None = None  # default: 5 more latents from --seed
    mix_layers: str = "coarse"  # the layers taken from the column: coarse|middle|fine|A-B
    # mode=interpolate: keyframes, `frames` images per segment between consecutive keyframes.
    seeds: list[int] | None = None  # default: n latents from --seed
    frames: int = Field(8, ge=2)
    space: Literal["z", "w"] = "z"  # slerp in z, or lerp in w (smoother, the StyleGAN paper)

    @field_validator("mix_layers")
    @classmethod
    def _band_or_range(cls, v: str) -> str:
        if (
            v in BANDS
            or re.fullmatch(r"\d+-\d+", v)
            and int(v.split("-")[0]) <= int(v.split("-")[1])
        ):
            return v
        raise ValueError("expected coarse, middle, fine, or a layer range A-B such as 0-3")

    @model_validator(mode="after")
    def _lists_not_empty(self) -> StyleGANSamplerOptions:
        for name in ("row_seeds", "col_seeds", "seeds"):
            if getattr(self, name) == []:
                raise ValueError(f"{name} is empty; give at least one seed or leave it out")
        return self


def seed_latents(seeds: list[int], dim: int) -> torch.Tensor:
    """One z per seed: the first draw of a CPU generator seeded with it."""
    return torch.cat(
        [torch.randn(1, dim, generator=torch.Generator().manual_seed(s)) for s in seeds]
    )


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of rows of ``a`` and ``b`` (``t`` is a column of fractions)."""
    an, bn = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    omega = torch.acos((an * bn).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7))
    so = torch.sin(omega)
    return (torch.sin((1 - t) * omega) / so) * a + (torch.sin(t * omega) / so) * b


def layer_range(band: str, resolutions: list[int]) -> range:
    """The layers (two per resolution) that ``band`` names for a generator of these resolutions.

    coarse: 4-8 px, middle: 16-32 px, fine: 64 px and up. A generator that stops below 64 px
    has no fine layers of its own; there ``fine`` is its last resolution's two layers.
    """
    num_ws = 2 * len(resolutions)
    if band not in BANDS:
        lo, hi = (int(x) for x in band.split("-"))
        if hi >= num_ws:
            raise BadInput(
                f"stylegan sampler: mix_layers={band} goes past the last layer ({num_ws - 1})",
                f"This generator has {num_ws} style layers: use ranges within 0-{num_ws - 1}.",
            )
        return range(lo, hi + 1)
    limits = {"coarse": (4, 8), "middle": (16, 32), "fine": (64, 1 << 30)}[band]
    layers = [
        2 * i + k for i, r in enumerate(resolutions) for k in (0, 1) if limits[0] <= r <= limits[1]
    ]
    if not layers:
        layers = [num_ws - 2, num_ws - 1]
    return range(layers[0], layers[-1] + 1)


def to_unit(x: torch.Tensor) -> torch.Tensor:
    return ((x.float().clamp(-1, 1) + 1) / 2).cpu()


class StyleGANSampler:
    """``sample(n, options, generator)``: images in [0, 1]. In ``mix`` and ``interpolate`` mode the
    images are the cells of a grid in row-major order; ``nrow(options)`` is its width."""

    def __init__(self, config, nets: dict[str, nn.Module], data: DataInfo):
        self.generator = nets.get("generator_ema", nets["generator"])

    def nrow(self, options: StyleGANSamplerOptions) -> int | None:
        """Images per grid row: None for ``sample`` (any layout), else the grid's width."""
        if options.mode == "mix":
            return 1 + (len(options.col_seeds) if options.col_seeds else DEFAULT_COLUMNS)
        if options.mode == "interpolate":
            return options.frames
        return None

    @torch.no_grad()
    def sample(
        self,
        n: int,
        options: StyleGANSamplerOptions,
        generator: torch.Generator,
        inputs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        g = self.generator
        if options.mode == "mix":
            rows = self._latents(options.row_seeds, n, generator)
            cols = self._latents(options.col_seeds, DEFAULT_COLUMNS, generator)
            return self._mixing_grid(rows, cols, options, generator)
        if options.mode == "interpolate":
            keys = self._latents(options.seeds, n, generator)
            return self._interpolation(keys, options, generator)
        z = torch.randn(n, g.z_dim, generator=generator)
        return self._render(g.broadcast(self._map(z)), options, generator)

    # ------------------------------------------------------------ the latent interface

    # genctl.steering moves z (N x z_dim, the N(0, I) input of the mapping network), not w:
    # z has a prior to stay near (the steering's distance penalty), and a steered z maps to a
    # w the mapping network can produce. Rendering: no truncation, constant noise maps.

    def latent(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` z latents from the prior, N(0, I), drawn on the CPU ``generator``."""
        return torch.randn(n, self.generator.z_dim, generator=generator)

    def generate(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Images in [0, 1] of z latents, differentiable in ``z`` (mapping, then synthesis with
        the constant noise maps; no truncation)."""
        g = self.generator
        ws = g.broadcast(self._map(z))
        return (g.synthesis(ws, g.synthesis.const_noise()).float().clamp(-1, 1) + 1) / 2

    # ------------------------------------------------------------ helpers

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    def _latents(
        self, seeds: list[int] | None, count: int, generator: torch.Generator
    ) -> torch.Tensor:
        if seeds:
            return seed_latents(seeds, self.generator.z_dim)
        return torch.randn(count, self.generator.z_dim, generator=generator)

    def _map(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator.mapping(z.to(self.device))

    def _render(
        self, ws: torch.Tensor, options: StyleGANSamplerOptions, generator: torch.Generator
    ) -> torch.Tensor:
        """Truncate, then synthesise in chunks, with const or freshly drawn noise."""
        g = self.generator
        ws = g.truncate(ws, options.truncation, options.truncation_cutoff)
        out = []
        for chunk in ws.split(64):
            if options.noise == "const":
                noise = g.synthesis.const_noise()
            else:
                noise = [
                    torch.randn(
                        len(chunk), 1, *layer.noise_const.shape[2:], generator=generator
                    ).to(self.device)
                    for layer in g.synthesis.layers
                ]
            out.append(to_unit(g.synthesis(chunk, noise)))
        return torch.cat(out)

    def _mixing_grid(
        self,
        rows: torch.Tensor,
        cols: torch.Tensor,
        options: StyleGANSamplerOptions,
        generator: torch.Generator,
    ) -> torch.Tensor:
        g = self.generator
        layers = layer_range(options.mix_layers, g.synthesis.resolutions)
        w_rows, w_cols = g.broadcast(self._map(rows)), g.broadcast(self._map(cols))
        mixed = w_rows[:, None].repeat(1, len(cols), 1, 1)  # rows x cols x num_ws x w_dim
        mixed[:, :, layers.start : layers.stop] = w_cols[None, :, layers.start : layers.stop]
        images = self._render(torch.cat([w_cols, w_rows, mixed.flatten(0, 1)]), options, generator)
        top, left, cells = images.split([len(cols), len(rows), len(rows) * len(cols)])
        blank = torch.ones_like(top[:1])
        grid = [torch.cat([blank, top])]
        for i, row in enumerate(cells.view(len(rows), len(cols), *cells.shape[1:])):
            grid.append(torch.cat([left[i : i + 1], row]))
        return torch.cat(grid)

    def _interpolation(
        self, keys: torch.Tensor, options: StyleGANSamplerOptions, generator: torch.Generator
    ) -> torch.Tensor:
        if len(keys) < 2:
            raise BadInput(
                "stylegan sampler: mode=interpolate needs at least two keyframes",
                "Give seeds=[0,1,2] (or -n 3 without --seeds).",
            )
        t = torch.linspace(0, 1, options.frames)[:, None]
        if options.space == "z":
            z = torch.cat(
                [slerp(a[None], b[None], t) for a, b in zip(keys, keys[1:], strict=False)]
            )
            w = self._map(z)
        else:
            wk = self._map(keys)
            w = torch.cat(
                [torch.lerp(a[None], b[None], t.to(wk)) for a, b in zip(wk, wk[1:], strict=False)]
            )
        return self._render(self.generator.broadcast(w), options, generator)


def build_sampler(config, nets: dict[str, nn.Module], data: DataInfo) -> StyleGANSampler:
    return StyleGANSampler(config, nets, data)
