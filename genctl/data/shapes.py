"""``kind: shapes`` — a built-in dataset drawn on the fly, so the quickstart needs no files.

Each image holds one filled shape (0 circle, 1 square, 2 triangle) of random colour, size
and position on a plain background (``data.background``). Shapes are drawn from signed
distances with one pixel of antialiasing, vectorised over the whole set, so 10,000 images of
32 x 32 take well under a second. The parameters come from a fixed seed (0 for the train
split, 1 for test) and do not depend on ``image_size``: item ``i`` is the same shape at
every resolution.
"""

from __future__ import annotations

import math

import torch

from .decode import to_channels

CLASS_NAMES = ("circle", "square", "triangle")
SPLIT_SEED = {"train": 0, "test": 1}


def generate(
    n: int,
    image_size: int,
    *,
    split: str = "train",
    background: tuple[int, int, int] = (255, 255, 255),
    channels: int = 3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images (uint8 N x C x S x S) and their shape labels (int64 N)."""
    g = torch.Generator().manual_seed(SPLIT_SEED[split])
    kind = torch.randint(0, 3, (n,), generator=g)
    u = torch.rand(n, 6, generator=g, dtype=torch.float64)
    radius = 0.15 + 0.15 * u[:, 0]  # in units of the image side
    reach = 1.35 * radius + 0.03  # the triangle's apex reaches furthest; keep a margin
    cx = reach + (1 - 2 * reach) * u[:, 1]
    cy = reach + (1 - 2 * reach) * u[:, 2]
    colour = _hsv_to_rgb(u[:, 3], 0.65 + 0.35 * u[:, 4], 0.45 + 0.45 * u[:, 5]) * 255

    s = image_size
    grid = (torch.arange(s, dtype=torch.float32) + 0.5) / s
    bg = torch.tensor(background, dtype=torch.float32).view(1, 3, 1, 1)
    delta = colour.float().view(-1, 3, 1, 1) - bg
    out = torch.empty((n, 3, s, s), dtype=torch.uint8)
    step = max(1, 2**21 // (s * s))  # bounded float memory
    for k, shape_sdf in enumerate(_SHAPES):  # each image computes the distance to its own shape
        items = (kind == k).nonzero().squeeze(1)
        for lo in range(0, len(items), step):
            idx = items[lo : lo + step]
            dx = grid.view(1, 1, s) - cx[idx].float().view(-1, 1, 1)
            dy = grid.view(1, s, 1) - cy[idx].float().view(-1, 1, 1)
            sdf = shape_sdf(dx, dy, radius[idx].float().view(-1, 1, 1))
            cover = (0.5 - sdf * s).clamp_(0, 1).unsqueeze(1)  # one pixel of antialiasing
            out[idx] = torch.addcmul(bg, delta[idx], cover).add_(0.5).to(torch.uint8)
    return to_channels(out, channels), kind


# Signed distances to the edge, in units of the image side, negative inside (exact inside,
# close enough just outside for one pixel of antialiasing).


def _circle(dx, dy, r):
    return torch.sqrt(dx * dx + dy * dy) - r


def _square(dx, dy, r):
    return torch.maximum(dx.abs(), dy.abs()) - 0.82 * r


_COS30 = math.cos(math.radians(30))


def _triangle(dx, dy, r):
    """Equilateral, pointing up (y grows downwards), circumradius 1.35 r: the largest distance
    along its three outward edge normals, minus the inradius."""
    left = -_COS30 * dx - 0.5 * dy
    right = _COS30 * dx - 0.5 * dy
    return torch.maximum(torch.maximum(dy, left), right) - 0.675 * r


_SHAPES = (_circle, _square, _triangle)


def _hsv_to_rgb(h, s, v):
    """Vectorised HSV -> RGB in [0, 1], N x 3."""
    n = torch.tensor([5.0, 3.0, 1.0], dtype=h.dtype)
    k = (n.view(1, 3) + h.view(-1, 1) * 6) % 6
    f = torch.minimum(k, 4 - k).clamp(0, 1)
    return v.view(-1, 1) * (1 - s.view(-1, 1) * f)
