"""CycleGAN's objective: least-squares GAN losses, cycle consistency and identity (Zhu et al. 2017).

Generator step (both generators, one optimizer)::

    fake_b = g_ab(a); fake_a = g_ba(b)
    loss_g = (d_b(fake_b) - 1)^2 + (d_a(fake_a) - 1)^2                       adversarial (LSGAN)
           + lambda_cycle * (|g_ba(fake_b) - a| + |g_ab(fake_a) - b|)          cycle consistency
           + lambda_cycle * lambda_identity * (|g_ab(b) - b| + |g_ba(a) - a|)  identity

Discriminator step (both discriminators, one optimizer): each sees real images of its domain
and translated ones drawn from a history of 50 earlier translations (the image pool, Shrivastava
et al. 2017), which damps oscillation; the loss is halved so D learns slower than G.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genctl.spec import DataInfo

from .config import CycleGANConfig


class ImagePool:
    """A history of generated images. Each query image is returned as is while the pool fills;
    afterwards, with probability 1/2, a random stored image is returned in its place and the
    new one takes its slot. The coin flips come from the pool's own CPU generator, so the hot
    loop never waits on the device, and that generator's state is saved with the images."""

    def __init__(self, size: int, seed: int):
        self.size = size
        self.images: Tensor | None = None  # size x C x H x W once the first image arrives
        self.count = 0
        self.rng = torch.Generator().manual_seed(seed)

    def query(self, images: Tensor) -> Tensor:
        if self.size == 0:
            return images
        images = images.detach().float()
        if self.images is None:
            self.images = images.new_zeros((self.size, *images.shape[1:]))
        elif self.images.device != images.device:  # loaded from a checkpoint onto the CPU
            self.images = self.images.to(images.device)
        out = []
        for image in images:
            if self.count < self.size:
                self.images[self.count] = image
                self.count += 1
                out.append(image)
            elif torch.rand((), generator=self.rng) < 0.5:
                slot = int(torch.randint(self.size, (), generator=self.rng))
                out.append(self.images[slot].clone())
                self.images[slot] = image
            else:
                out.append(image)
        return torch.stack(out)

    def state_dict(self) -> dict[str, Any]:
        images = self.images[: self.count].detach().cpu() if self.images is not None else None
        return {"images": images, "count": self.count, "rng": self.rng.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = int(state["count"])
        self.rng.set_state(state["rng"])
        stored = state["images"]
        if stored is None:
            self.images = None
            return
        self.images = stored.new_zeros((self.size, *stored.shape[1:]))
        self.images[: self.count] = stored


def lsgan(scores: Tensor, real: bool) -> Tensor:
    """Least-squares GAN loss against target 1 (real) or 0 (fake)."""
    target = 1.0 if real else 0.0
    return F.mse_loss(scores, torch.full_like(scores, target))


class CycleGANObjective:
    groups = {"g": ["g_ab", "g_ba"], "d": ["d_a", "d_b"]}

    def __init__(self, config: CycleGANConfig, nets: dict[str, nn.Module], info: DataInfo):
        self.config = config
        self.nets = nets
        # Seeds drawn from torch's RNG, which the trainer seeds: same recipe seed, same pools.
        seeds = torch.randint(2**62, (2,)).tolist()
        self.pool_a = ImagePool(config.pool_size, seeds[0])  # translations into domain A
        self.pool_b = ImagePool(config.pool_size, seeds[1])
        # The generator step's translations, reused (detached) by the discriminator step that
        # follows it, as in the paper's code: it saves two generator passes per step.
        self._fakes: tuple[Tensor, Tensor] | None = None

    def schedule(self, step: int) -> list[str]:
        return ["g", "d"]

    def loss(
        self, group: str, batch: dict[str, Tensor], step: int
    ) -> tuple[Tensor, dict[str, Tensor]]:
        if group == "g":
            return self._generator_loss(batch["a"], batch["b"])
        return self._discriminator_loss(batch["a"], batch["b"])

    def _generator_loss(self, a: Tensor, b: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        g_ab, g_ba, d_a, d_b = (self.nets[k] for k in ("g_ab", "g_ba", "d_a", "d_b"))
        c = self.config
        fake_b, fake_a = g_ab(a), g_ba(b)
        adv = lsgan(d_b(fake_b), True) + lsgan(d_a(fake_a), True)
        cycle = F.l1_loss(g_ba(fake_b), a) + F.l1_loss(g_ab(fake_a), b)
        loss = adv + c.lambda_cycle * cycle
        logs = {"adv": adv.detach(), "cycle": cycle.detach()}
        if c.lambda_identity > 0:
            identity = F.l1_loss(g_ab(b), b) + F.l1_loss(g_ba(a), a)
            loss = loss + c.lambda_cycle * c.lambda_identity * identity
            logs["identity"] = identity.detach()
        self._fakes = (fake_a.detach(), fake_b.detach())
        return loss, logs

    def _discriminator_loss(self, a: Tensor, b: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        d_a, d_b = self.nets["d_a"], self.nets["d_b"]
        if self._fakes is None:  # no generator step before this one: translate afresh
            with torch.no_grad():
                self._fakes = (self.nets["g_ba"](b), self.nets["g_ab"](a))
        fake_a, fake_b = self._fakes
        self._fakes = None
        fake_a, fake_b = self.pool_a.query(fake_a), self.pool_b.query(fake_b)
        real_a, real_b = d_a(a), d_b(b)
        scores_fake_a, scores_fake_b = d_a(fake_a), d_b(fake_b)
        loss_a = 0.5 * (lsgan(real_a, True) + lsgan(scores_fake_a, False))
        loss_b = 0.5 * (lsgan(real_b, True) + lsgan(scores_fake_b, False))
        logs = {
            "loss_d_a": loss_a.detach(),
            "loss_d_b": loss_b.detach(),
            "d_real": 0.5 * (real_a.detach().mean() + real_b.detach().mean()),
            "d_fake": 0.5 * (scores_fake_a.detach().mean() + scores_fake_b.detach().mean()),
        }
        return loss_a + loss_b, logs

    def state_dict(self) -> dict[str, Any]:
        return {"pool_a": self.pool_a.state_dict(), "pool_b": self.pool_b.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pool_a.load_state_dict(state["pool_a"])
        self.pool_b.load_state_dict(state["pool_b"])
        self._fakes = None
