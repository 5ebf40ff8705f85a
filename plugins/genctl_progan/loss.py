"""The ProGAN objective: WGAN-GP with a drift term, and the progressive-growing schedule.

The growth stage (which resolution, how far the newest block has faded in) is a function of the
training step and the config's ``stable_steps``/``fade_steps``; the objective keeps it as its
state and writes it into the generator's buffers, so a checkpoint's weights and objective state
both say which stage they were trained at.

``model.diffaugment`` (DiffAugment, :mod:`genctl.augment`): the images the critic sees, real and
fake, in both updates, go through the same random differentiable transformations first, at the
stage's resolution; the gradient penalty mixes the augmented images the critic is trained on.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from genctl.augment import diff_augment, parse_policy
from genctl.errors import BadInput
from genctl.spec import DataInfo, penalty_gradients
from genctl_progan.config import ProGANConfig
from genctl_progan.model import downsample, upsample


def gradient_penalty(
    critic, real: torch.Tensor, fake: torch.Tensor, scaler=None, **kwargs
) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al. 2017): (||grad critic(x_hat)|| - 1)^2 on real/fake mixtures.
    ``scaler``: the trainer's GradScaler (fp16 loss scaling of the gradient, see
    ``genctl.spec.penalty_gradients``)."""
    eps = torch.rand(len(real), 1, 1, 1, device=real.device, dtype=real.dtype)
    x_hat = torch.lerp(real, fake.to(real.dtype), eps).requires_grad_(True)  # fake may be bf16
    grad = penalty_gradients(critic(x_hat, **kwargs), x_hat, scaler)
    return (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()


class GrowthSchedule:
    """Step -> (phase, depth, alpha). Phase 0 is the first resolution; phase 2k-1 fades in
    resolution k (alpha 0 -> 1), phase 2k trains it at alpha 1."""

    def __init__(self, start_depth: int, max_depth: int, stable_steps: int, fade_steps: int):
        self.start_depth, self.max_depth = start_depth, max_depth
        self.stable_steps, self.fade_steps = stable_steps, fade_steps

    def at(self, step: int) -> tuple[int, int, float]:
        s = max(step, 0)
        if s < self.stable_steps or self.start_depth == self.max_depth:
            return 0, self.start_depth, 1.0
        s -= self.stable_steps
        growths = self.max_depth - self.start_depth
        for k in range(1, growths + 1):
            if s < self.fade_steps:
                return 2 * k - 1, self.start_depth + k, s / self.fade_steps
            s -= self.fade_steps
            if s < self.stable_steps or k == growths:
                return 2 * k, self.start_depth + k, 1.0
            s -= self.stable_steps
        raise AssertionError("unreachable")

    def total_steps(self) -> int:
        """Steps until the final resolution is fully faded in and has had its stable phase."""
        growths = self.max_depth - self.start_depth
        return self.stable_steps + growths * (self.fade_steps + self.stable_steps)


def check_recipe(recipe) -> None:
    """Bad input when training would end, or evaluate, before the final resolution is reached.

    A run shorter than the growth schedule would stop at a lower resolution, and its samples
    and FID would be of blocky images; so would an evaluation before the last fade-in ends.
    """
    config, size = recipe.model, recipe.data.image_size
    if size < 4 or size & (size - 1):
        return  # build() reports the image size itself
    max_depth = size.bit_length() - 3
    start_depth = min(config.start_resolution.bit_length() - 3, max_depth)
    growth = GrowthSchedule(start_depth, max_depth, config.stable_steps, config.fade_steps)
    needed, growths = growth.total_steps(), max_depth - start_depth
    phases = 1 + 2 * growths  # the first resolution, then a fade-in and a stable phase each
    steps = recipe.train.steps
    if steps < needed:
        fit = max(steps // phases, 1)
        raise BadInput(
            f"train.steps={steps} ends before the growth schedule reaches {size}x{size}: "
            f"{4 << start_depth}x{4 << start_depth} for model.stable_steps={config.stable_steps}, "
            f"then {growths} resolution(s) x (model.fade_steps={config.fade_steps} + "
            f"model.stable_steps={config.stable_steps}) need train.steps >= {needed}",
            f"Set train.steps={needed}, or shorten the phases to fit {steps} steps "
            f"(model.stable_steps={fit} model.fade_steps={fit}), or lower data.image_size.",
        )
    full = needed - config.stable_steps  # the step at which the final fade-in ends
    every = recipe.evaluate.every
    if every and every < full:
        raise BadInput(
            f"evaluate.every={every} would score images below {size}x{size}: the last "
            f"resolution has faded in only at step {full}",
            f"Set evaluate.every >= {full} (a divisor of train.steps={steps} keeps the last "
            "evaluation at the end), or shorten the growth phases.",
        )


class ProGANObjective:
    grad_scaler = None  # set by the trainer: fp16 loss scaling for the gradient penalty

    def __init__(self, config: ProGANConfig, nets: dict[str, nn.Module], data: DataInfo):
        self.config = config
        self.generator, self.critic = nets["generator"], nets["critic"]
        self.groups = {"d": ["critic"], "g": ["generator"]}
        start_depth = config.start_resolution.bit_length() - 3  # 4 -> 0, 8 -> 1, ...
        self.growth = GrowthSchedule(
            min(start_depth, self.generator.max_depth),
            self.generator.max_depth,
            config.stable_steps,
            config.fade_steps,
        )
        self.phase, self.depth, self.alpha = self.growth.at(0)
        self.augment = parse_policy(config.diffaugment)  # () when off
        self.generator.set_stage(self.depth, self.alpha)

    # ------------------------------------------------------------ the growth stage

    def set_step(self, step: int) -> None:
        """Move to the growth stage of ``step`` (and record it in the generator)."""
        phase, depth, alpha = self.growth.at(step)
        if (phase, depth, alpha) != (self.phase, self.depth, self.alpha):
            self.phase, self.depth, self.alpha = phase, depth, alpha
            self.generator.set_stage(depth, alpha)

    @property
    def resolution(self) -> int:
        return 4 * 2**self.depth

    def real_at_stage(self, image: torch.Tensor) -> torch.Tensor:
        """Real images at the current resolution; while fading in, blended with the previous
        resolution's (upsampled) version in the same proportion as the generator's output."""
        factor = image.shape[-1] // self.resolution
        x = downsample(image, factor) if factor > 1 else image
        if self.alpha < 1.0:
            x = torch.lerp(upsample(downsample(x)), x, self.alpha)
        return x

    # ------------------------------------------------------------ the objective protocol

    def schedule(self, step: int) -> list[str]:
        self.set_step(step)
        return ["d"] * self.config.n_critic + ["g"]

    def _seen(self, images: torch.Tensor) -> torch.Tensor:
        """What the critic sees of real or fake ``images`` (at the stage's resolution):
        DiffAugment's when ``model.diffaugment`` is on."""
        return diff_augment(images, self.augment) if self.augment else images

    def _fake(self, n: int, device: torch.device) -> torch.Tensor:
        z = torch.randn(n, self.generator.latent_dim, device=device)
        return self.generator(z, self.depth, self.alpha)

    def loss(
        self, group: str, batch: dict[str, torch.Tensor], step: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        real = self.real_at_stage(batch["image"])
        stage = {"depth": self.depth, "alpha": self.alpha}
        logs = {
            "alpha": torch.full((), self.alpha, device=real.device),
            "resolution": torch.full((), float(self.resolution), device=real.device),
        }
        if group == "d":
            with torch.no_grad():
                fake = self._fake(len(real), real.device)
            real, fake = self._seen(real), self._seen(fake)  # the penalty mixes these
            d_real = self.critic(real, **stage)
            d_fake = self.critic(fake, **stage)
            gp = gradient_penalty(self.critic, real, fake, self.grad_scaler, **stage)
            drift = d_real.float().pow(2).mean()
            loss = (
                d_fake.mean()
                - d_real.mean()
                + self.config.gp_weight * gp
                + self.config.drift_weight * drift
            )
            logs |= {
                "d_real": d_real.mean().detach(),
                "d_fake": d_fake.mean().detach(),
                "wasserstein": (d_real.mean() - d_fake.mean()).detach(),
                "gp": gp.detach(),
            }
            return loss, logs
        d_fake = self.critic(self._seen(self._fake(len(real), real.device)), **stage)
        return -d_fake.mean(), logs | {"d_fake": d_fake.mean().detach()}

    def state_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "depth": self.depth, "alpha": self.alpha}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.phase, self.depth, self.alpha = (
            int(state["phase"]),
            int(state["depth"]),
            float(state["alpha"]),
        )
        self.generator.set_stage(self.depth, self.alpha)


def build_objective(
    config: ProGANConfig, nets: dict[str, nn.Module], data: DataInfo
) -> ProGANObjective:
    return ProGANObjective(config, nets, data)
