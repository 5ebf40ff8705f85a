"""Classifier steering: move a generator's latents until a classifier sees the class asked for.

A family whose sampler draws from a latent exposes it with two methods (the latent interface,
see :class:`genctl.spec.Sampler`)::

    latent(n, generator) -> z                 n latents, all randomness from the CPU generator
    generate(z, labels=None) -> images        images in [0, 1], differentiable in z

Steering freezes the generator and a classifier, passes the latents through both, and moves
the latents by gradient ascent (Adam) on the classifier's log-probability of the target class,
less ``keep`` times the squared distance to the start latent, which holds the rest of the
image in place::

    maximise over z:  log p(target | generate(z)) - keep * ||z - z0||^2

Each latent moves on its own (the objective is a sum over images and Adam's steps are per
coordinate), so the batch never changes an image's path. ``genctl steer`` is its command.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from genctl.errors import BadInput

LATENT_METHODS = ("latent", "generate")


def has_latent(sampler: Any) -> bool:
    """Whether ``sampler`` exposes its latent: ``latent(n, generator)`` and ``generate(z)``."""
    return all(callable(getattr(sampler, m, None)) for m in LATENT_METHODS)


def require_latent(sampler: Any, name: str) -> None:
    """Bad input naming the two methods when ``sampler`` (of family ``name``) has no latent."""
    if not has_latent(sampler):
        raise BadInput(
            f"{name} models cannot be steered: the sampler has no latent(n, generator) and "
            "generate(z, labels=None) methods",
            "Steering moves a generator's latent; families that draw from one (vanilla_gan, "
            "dcgan, progan, stylegan, vae) have them, and a plugin adds them (docs/plugins.md).",
        )


def fit_images(images: Tensor, channels: int, side: int) -> Tensor:
    """Images in [0, 1] -> what a classifier of ``channels`` x ``side`` px takes: [-1, 1],
    resized (bilinear, antialiased) and converted between grey and RGB, differentiably."""
    c = images.shape[1]
    if c != channels:
        if c == 1:
            images = images.expand(-1, channels, -1, -1)
        elif channels == 1:
            images = images.mean(1, keepdim=True)
        else:
            raise BadInput(
                f"the classifier takes {channels}-channel images; the model draws {c}-channel ones",
                "Use a classifier trained on images like the model's (grey or RGB).",
            )
    if images.shape[-1] != side or images.shape[-2] != side:
        images = F.interpolate(images, size=(side, side), mode="bilinear", antialias=True)
    return images * 2 - 1


def target_log_prob(classifier: Any, target: int) -> Callable[[Tensor], Tensor]:
    """``images in [0, 1] -> log p(target | image)`` per image, of a loaded classifier
    (:class:`genctl.classifiers.Classifier`), on the classifier's device."""
    device = next(next(iter(classifier.model.nets.values())).parameters()).device

    def log_prob(images: Tensor) -> Tensor:
        x = fit_images(images.to(device), classifier.channels, classifier.image_size)
        return classifier.logits(x).float().log_softmax(1)[:, target]

    return log_prob


@dataclass
class Steered:
    """What :func:`steer` did to each latent."""

    start: Tensor  # N x ... the start latents
    end: Tensor  # N x ... the steered latents
    frames: list[Tensor] = field(default_factory=list)  # images in [0, 1] (CPU) at frame_steps
    frame_steps: list[int] = field(default_factory=list)  # 0 (the start) ... steps (the end)
    log_prob_start: Tensor | None = None  # N: log p(target) of the start images
    log_prob_end: Tensor | None = None  # N: of the end images

    @property
    def distance(self) -> Tensor:
        """N: how far each latent moved (Euclidean)."""
        return (self.end - self.start).flatten(1).norm(dim=1)


def frame_steps(steps: int, frames: int) -> list[int]:
    """``frames`` steps from 0 to ``steps``, evenly spaced (the start and the end included)."""
    frames = max(2, min(frames, steps + 1))
    return sorted({round(i * steps / (frames - 1)) for i in range(frames)})


def steer(
    generate: Callable[[Tensor, Tensor | None], Tensor],
    log_prob: Callable[[Tensor], Tensor],
    z0: Tensor,
    *,
    steps: int = 50,
    lr: float = 0.1,
    keep: float = 0.1,
    labels: Tensor | None = None,
    frames: int = 2,
) -> Steered:
    """Move latents ``z0`` by ``steps`` Adam steps of size ``lr`` up ``log_prob(generate(z))``
    less ``keep * ||z - z0||^2``; record the images at ``frames`` evenly spaced steps."""
    if steps < 1 or lr <= 0 or keep < 0:
        raise BadInput(
            f"steering needs steps >= 1, lr > 0 and keep >= 0 (got steps={steps}, lr={lr}, "
            f"keep={keep})"
        )
    start = z0.detach().clone()
    z = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    record = frame_steps(steps, frames)
    out = Steered(start=start, end=start, frame_steps=record)
    with torch.enable_grad():
        for step in range(steps + 1):
            images = generate(z, labels)
            lp = log_prob(images)
            if step == 0:
                out.log_prob_start = lp.detach().cpu()
            if step in record:
                out.frames.append(images.detach().float().clamp(0, 1).cpu())
            if step == steps:
                out.log_prob_end = lp.detach().cpu()
                break
            penalty = (z - start.to(z.device)).flatten(1).square().sum(1)
            loss = (keep * penalty - lp.to(penalty.device)).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    out.end = z.detach().clone()
    return out


def grid(result: Steered) -> tuple[Tensor, int]:
    """(images, nrow): one row per latent, its frames from the start (left) to the end."""
    stacked = torch.stack(result.frames, dim=1)  # N x frames x C x H x W
    return stacked.flatten(0, 1), stacked.shape[1]
