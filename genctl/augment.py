"""Differentiable augmentation (DiffAugment, Zhao et al. 2020, arXiv:2006.10738) for GANs on
small datasets.

With a few hundred or thousand images a GAN's discriminator memorises the training set: its
loss on real images goes to zero, its feedback to the generator stops meaning anything, and the
samples degrade or collapse. Augmenting only the real images would teach the generator to make
augmented images. DiffAugment instead applies the same random, differentiable transformations to
every image the discriminator sees, real and generated, in the discriminator's and in the
generator's updates; the generator's gradient flows back through the transformation.

A policy is a comma-separated list of transformations, applied in that order (each with its
own random draw per image):

* ``color``: brightness (add a uniform offset in [-0.5, 0.5]), saturation (scale the distance
  to the per-pixel channel mean by a factor in [0, 2]) and contrast (scale the distance to the
  image's mean by a factor in [0.5, 1.5]), in that order;
* ``translation``: shift by a whole number of pixels, up to 1/8 of the side in each direction,
  filling with zeros (mid-grey for images in [-1, 1]);
* ``cutout``: zero a square of half the side at a random place (it may stick out of the image).

These are the paper's three transformations and strengths; the paper recommends
``color,translation,cutout`` for unconditional and class-conditional GANs trained on little
data. Families take the policy as ``model.diffaugment`` (empty: off) and validate it with
:data:`DiffAugmentPolicy`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from pydantic import AfterValidator

if TYPE_CHECKING:
    import torch
    from torch import Tensor

TRANSFORMS = ("color", "translation", "cutout")
TRANSLATION_RATIO = 1 / 8  # largest shift, as a share of the side
CUTOUT_RATIO = 1 / 2  # side of the cut-out square, as a share of the image's side


def parse_policy(policy: str) -> tuple[str, ...]:
    """The transformations of a policy string (``"color,translation,cutout"``); ``""``: none.
    Unknown or repeated names are a ValueError naming the ones allowed."""
    names = tuple(n.strip().lower() for n in policy.split(",") if n.strip())
    unknown = [n for n in names if n not in TRANSFORMS]
    if unknown:
        raise ValueError(
            f"unknown DiffAugment transformation(s) {unknown}; use a comma-separated list of "
            f"{', '.join(TRANSFORMS)} (the paper's policy: color,translation,cutout), or '' for none"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"a DiffAugment transformation is repeated in {policy!r}")
    return names


def _normalise(policy: str) -> str:
    return ",".join(parse_policy(policy))


DiffAugmentPolicy = Annotated[str, AfterValidator(_normalise)]
"""A pydantic field type for a family's ``diffaugment`` setting: validated, stored normalised
(lower case, no spaces), so the run's recorded parameter reads the same whatever was typed."""


def diff_augment(
    images: Tensor, policy: str | tuple[str, ...], generator: torch.Generator | None = None
) -> Tensor:
    """``images`` (N x C x H x W) with ``policy``'s transformations, differentiable in them.

    Random draws come from ``generator`` (a CPU generator: the same images for the same seed)
    or, without one, from torch's global generator on the images' device (what training uses,
    seeded and restored on resume by the trainer). An empty policy returns ``images`` as they are.
    """
    names = parse_policy(policy) if isinstance(policy, str) else policy
    for name in names:
        images = _TRANSFORMS[name](images, generator)
    return images


def _uniform(n: int, images: Tensor, generator) -> Tensor:
    """n uniform draws in [0, 1) shaped n x 1 x 1 x 1, on the images' device and dtype."""
    import torch

    if generator is None:
        u = torch.rand(n, 1, 1, 1, device=images.device)
    else:
        u = torch.rand(n, 1, 1, 1, generator=generator).to(images.device)
    return u.to(images.dtype)


def _integers(low: int, high: int, n: int, images: Tensor, generator) -> Tensor:
    """n integers in [low, high] on the images' device."""
    import torch

    if generator is None:
        return torch.randint(low, high + 1, (n,), device=images.device)
    return torch.randint(low, high + 1, (n,), generator=generator).to(images.device)


def color(images: Tensor, generator=None) -> Tensor:
    n = images.shape[0]
    x = images + (_uniform(n, images, generator) - 0.5)  # brightness
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_uniform(n, images, generator) * 2) + mean  # saturation
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_uniform(n, images, generator) + 0.5) + mean  # contrast


def translation(images: Tensor, generator=None) -> Tensor:
    """Each image shifted by (dy, dx), |d| up to 1/8 of the side, zeros where nothing shifts in:
    output pixel (i, j) is input pixel (i + dy, j + dx)."""
    import torch
    import torch.nn.functional as F

    n, _, h, w = images.shape
    my, mx = int(h * TRANSLATION_RATIO + 0.5), int(w * TRANSLATION_RATIO + 0.5)
    dy = _integers(-my, my, n, images, generator)
    dx = _integers(-mx, mx, n, images, generator)
    padded = F.pad(images, [mx, mx, my, my])  # zeros around: what shifts in from outside
    rows = torch.arange(h, device=images.device)[None, :] + dy[:, None] + my  # n x h
    cols = torch.arange(w, device=images.device)[None, :] + dx[:, None] + mx  # n x w
    batch = torch.arange(n, device=images.device)[:, None, None]
    shifted = padded[batch, :, rows[:, :, None], cols[:, None, :]]  # n x h x w x c
    return shifted.permute(0, 3, 1, 2)


def cutout(images: Tensor, generator=None) -> Tensor:
    """A square of half the side, centred at a random pixel (clipped at the borders), zeroed."""
    import torch

    n, _, h, w = images.shape
    sy, sx = int(h * CUTOUT_RATIO + 0.5), int(w * CUTOUT_RATIO + 0.5)
    cy = _integers(0, h - 1, n, images, generator)
    cx = _integers(0, w - 1, n, images, generator)
    top, left = cy - sy // 2, cx - sx // 2
    ys = torch.arange(h, device=images.device)[None, :]
    xs = torch.arange(w, device=images.device)[None, :]
    inside_y = (ys >= top[:, None]) & (ys < top[:, None] + sy)  # n x h
    inside_x = (xs >= left[:, None]) & (xs < left[:, None] + sx)  # n x w
    cut = inside_y[:, :, None] & inside_x[:, None, :]  # n x h x w
    return images * (~cut).unsqueeze(1).to(images.dtype)


_TRANSFORMS = {"color": color, "translation": translation, "cutout": cutout}
