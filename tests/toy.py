"""A tiny model family used by the core's tests: a linear GAN, registered inside the tests.

It exercises the whole contract (two optimizer groups, objective state, sampler options) at a
size that trains in milliseconds, so core tests do not depend on any built-in family.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

import genctl
from genctl.spec import DataInfo, ModelSpec, Schema


class ToyConfig(Schema):
    latent: int = 8
    d_steps: int = 1


class ToyOptions(Schema):
    scale: float = 1.0  # multiplies the latent noise


def build(config: ToyConfig, info: DataInfo) -> dict[str, nn.Module]:
    dim = info.channels * info.image_size * info.image_size
    g = nn.Sequential(nn.Linear(config.latent, dim), nn.Tanh())
    d = nn.Sequential(nn.Flatten(), nn.Linear(dim, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
    return {"generator": g, "discriminator": d}


class ToyObjective:
    groups = {"d": ["discriminator"], "g": ["generator"]}

    def __init__(self, config: ToyConfig, nets, info: DataInfo):
        self.config, self.nets, self.info = config, nets, info
        self.updates = torch.zeros((), dtype=torch.long)  # state that must survive resume

    def schedule(self, step: int):
        return ["d"] * self.config.d_steps + ["g"]

    def _fake(self, n: int, device) -> torch.Tensor:
        z = torch.randn(n, self.config.latent, device=device)
        s = self.info.image_size
        return self.nets["generator"](z).view(n, self.info.channels, s, s)

    def loss(self, group, batch, step):
        real = batch["image"]
        self.updates += 1
        d = self.nets["discriminator"]
        if group == "d":
            fake = self._fake(len(real), real.device).detach()
            lr, lf = d(real), d(fake)
            loss = F.softplus(-lr).mean() + F.softplus(lf).mean()
            return loss, {"d_real": lr.mean().detach(), "d_fake": lf.mean().detach()}
        loss = F.softplus(-d(self._fake(len(real), real.device))).mean()
        return loss, {}

    def state_dict(self):
        return {"updates": self.updates.clone()}

    def load_state_dict(self, state):
        self.updates = state["updates"].clone()


class ToySampler:
    def __init__(self, config: ToyConfig, nets, info: DataInfo):
        self.config, self.info = config, info
        self.g = nets.get("generator_ema", nets["generator"])

    @torch.no_grad()
    def sample(self, n, options, generator, inputs=None):
        z = torch.randn(n, self.config.latent, generator=generator) * options.scale
        device = next(self.g.parameters()).device
        s = self.info.image_size
        return self.g(z.to(device)).view(n, self.info.channels, s, s).add(1).div(2)


SPEC = ModelSpec(
    name="toy",
    task="unconditional",
    config=ToyConfig,
    build=build,
    objective=ToyObjective,
    sampler=ToySampler,
    sampler_options=ToyOptions,
    description="linear GAN for tests",
)


@genctl.hookimpl
def genctl_register_models(registry):
    registry.add(SPEC)
