"""The noise schedule and the two reverse-process schedulers, kept apart from the network.

Diffusers-style interface: a scheduler knows the forward process (``add_noise``), is told how many
sampling steps to take (``set_timesteps``), and turns the network's prediction at one step into
the next, less noisy sample (``step``). The sampling loop that calls them is in ``sampler.py``.

Notation (Ho et al. 2020, https://arxiv.org/abs/2006.11239): ``beta_t`` the noise added at step t,
``alpha_t = 1 - beta_t``, ``abar_t = prod_{s<=t} alpha_s`` ("alphas_cumprod"), so that
``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``. Timesteps run 0 .. T-1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from genctl.spec import noise

if TYPE_CHECKING:
    from genctl_ddpm.config import DDPMConfig

BetaSchedule = Literal["linear", "cosine"]
Prediction = Literal["epsilon", "v"]
Spacing = Literal["leading", "trailing", "linspace"]


def make_betas(
    schedule: BetaSchedule, timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02
) -> Tensor:
    """The per-step noise variances ``beta_t``, float64.

    ``linear``: evenly spaced from ``beta_start`` to ``beta_end`` (DDPM paper, T=1000).
    ``cosine``: Nichol & Dhariwal 2021 (https://arxiv.org/abs/2102.09672, eq. 17): ``abar`` follows
    ``cos((t/T + s) / (1 + s) * pi/2)^2`` with ``s = 0.008``; each beta is capped at 0.999 so the
    last steps do not become singular.
    """
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)
    if schedule == "cosine":

        def abar(u: float) -> float:
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = [
            min(1.0 - abar((i + 1) / timesteps) / abar(i / timesteps), 0.999)
            for i in range(timesteps)
        ]
        return torch.tensor(betas, dtype=torch.float64)
    raise ValueError(f"unknown beta schedule {schedule!r}; expected linear or cosine")


class NoiseSchedule:
    """The forward process q(x_t | x_0): betas and their cumulative products, float32."""

    def __init__(
        self,
        schedule: BetaSchedule = "linear",
        timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        prediction: Prediction = "epsilon",
        clip_sample: bool = True,
    ) -> None:
        betas = make_betas(schedule, timesteps, beta_start, beta_end)
        self.num_train_timesteps = timesteps
        self.prediction = prediction
        self.clip_sample = clip_sample
        # float32 throughout, as diffusers does: near t=0, 1 - abar_t is ~1e-4 and the steps'
        # coefficients magnify the rounding of abar, so the same rounding gives the same samples
        self.betas = betas.float()
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)

    def _abar(self, t: Tensor, like: Tensor) -> Tensor:
        """``abar_t`` for a batch of timesteps, shaped to broadcast against ``like``."""
        a = self.alphas_cumprod.to(like.device)[t.to(like.device).long()]
        return a.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """q_sample: ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise`` for per-item timesteps."""
        a = self._abar(t, x0)
        return a.sqrt() * x0 + (1.0 - a).sqrt() * noise

    def velocity(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """The v-prediction target ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0``
        (Salimans & Ho 2022, https://arxiv.org/abs/2202.00512)."""
        a = self._abar(t, x0)
        return a.sqrt() * noise - (1.0 - a).sqrt() * x0

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """What the network learns to predict at ``x_t``: the noise, or v."""
        return noise if self.prediction == "epsilon" else self.velocity(x0, noise, t)

    def predict_x0_eps(
        self, model_output: Tensor, sample: Tensor, abar: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The clean image and the noise implied by the network's output at ``x_t``."""
        if self.prediction == "epsilon":
            eps = model_output
            x0 = (sample - (1 - abar).sqrt() * eps) / abar.sqrt()
        else:
            x0 = abar.sqrt() * sample - (1 - abar).sqrt() * model_output
            eps = abar.sqrt() * model_output + (1 - abar).sqrt() * sample
        return x0, eps


def make_schedule(config: DDPMConfig) -> NoiseSchedule:
    """The schedule a recipe's ``model:`` section describes."""
    return NoiseSchedule(
        config.beta_schedule,
        config.timesteps,
        config.beta_start,
        config.beta_end,
        config.prediction,
        config.clip_sample,
    )


@dataclass
class StepOutput:
    prev_sample: Tensor  # x_{t-1} (or x at the previous sampling timestep)
    pred_original_sample: Tensor  # the model's estimate of x_0 at this step


Generators = torch.Generator | list[torch.Generator] | None


def _noise_like(x: Tensor, generator: Generators) -> Tensor:
    """Gaussian noise drawn on the CPU generator, then moved: same seed, same noise. A list of
    generators draws row i from generator i (genctl gives one per image), so an image does not
    depend on the others it is sampled with."""
    return noise("randn", tuple(x.shape), generator, x.dtype).to(x.device)


class _Scheduler:
    """Shared by both samplers: the schedule, and the sampling timesteps with their spacing."""

    def __init__(self, schedule: NoiseSchedule) -> None:
        self.schedule = schedule
        self.num_inference_steps = schedule.num_train_timesteps
        self.spacing: Spacing = "leading"
        self._use(torch.arange(schedule.num_train_timesteps - 1, -1, -1))

    def set_timesteps(self, num_inference_steps: int, spacing: Spacing = "leading") -> None:
        """Use ``num_inference_steps`` timesteps, spaced as in Lin et al. 2023, table 2
        (https://arxiv.org/abs/2305.08891) and diffusers' ``timestep_spacing``:

        - ``leading``: ``k * (T // n)`` for k = n-1 .. 0 (DDIM's, Stable Diffusion's): the first
          step is at ``T - T//n``, never at ``T - 1``, where the sampler's pure noise belongs;
        - ``trailing``: ``round(T - k * T/n) - 1`` for k = 0 .. n-1: starts at ``T - 1`` and
          ends at ``T/n - 1``, from where the last step goes straight to x_0;
        - ``linspace``: ``round(linspace(0, T-1, n))`` reversed: from ``T - 1`` down to 0.

        Each step goes from its timestep to the next one in this list; the last one to x_0.
        """
        T = self.schedule.num_train_timesteps
        if not 1 <= num_inference_steps <= T:
            raise ValueError(f"steps must be between 1 and {T}, got {num_inference_steps}")
        n = num_inference_steps
        if spacing == "leading":
            timesteps = torch.arange(n - 1, -1, -1) * (T // n)
        elif spacing == "trailing":
            timesteps = torch.arange(T, 0, -T / n, dtype=torch.float64).round().long() - 1
        elif spacing == "linspace":
            timesteps = torch.linspace(0, T - 1, n, dtype=torch.float64).round().long().flip(0)
        else:
            raise ValueError(f"unknown spacing {spacing!r}; expected leading, trailing or linspace")
        self.num_inference_steps, self.spacing = n, spacing
        self._use(timesteps)

    def _use(self, timesteps: Tensor) -> None:
        self.timesteps = timesteps
        steps = timesteps.tolist()
        self._previous = dict(zip(steps, steps[1:] + [-1], strict=True))

    def previous_timestep(self, t: int) -> int:
        """The timestep a step from ``t`` lands on: the next one in ``timesteps``; -1 is x_0."""
        try:
            return self._previous[int(t)]
        except KeyError:
            raise ValueError(f"timestep {t} is not one of this scheduler's timesteps") from None

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        return self.schedule.add_noise(x0, noise, t)

    def _alphas(self, t: int) -> tuple[Tensor, Tensor]:
        """``abar_t`` and ``abar_prev`` (1 before the first step: x_0 is noise-free)."""
        ac = self.schedule.alphas_cumprod
        prev = self.previous_timestep(t)
        return ac[t], ac[prev] if prev >= 0 else torch.tensor(1.0)

    def pred_original_sample(self, model_output: Tensor, timestep: int, sample: Tensor) -> Tensor:
        """The model's estimate of x_0 at ``timestep`` (unclipped: guidance differentiates it)."""
        abar_t = self.schedule.alphas_cumprod[int(timestep)].to(sample.device)
        return self.schedule.predict_x0_eps(model_output, sample, abar_t)[0]

    def _x0_eps(
        self, model_output: Tensor, t: int, sample: Tensor, rederive: bool = False
    ) -> tuple[Tensor, Tensor]:
        """x_0 and the noise at ``x_t``; with ``clip_sample``, x_0 clamped to [-1, 1] and, if
        ``rederive``, the noise that this clamped x_0 implies: ``(x_t - sqrt(abar_t) x_0) /
        sqrt(1 - abar_t)``, so that ``x_t`` is again exactly ``x_0`` noised by it."""
        abar_t = self.schedule.alphas_cumprod[t].to(sample.device)
        x0, eps = self.schedule.predict_x0_eps(model_output, sample, abar_t)
        if self.schedule.clip_sample:
            x0 = x0.clamp(-1, 1)
            if rederive:
                eps = (sample - abar_t.sqrt() * x0) / (1 - abar_t).sqrt()
        return x0, eps


class DDPMScheduler(_Scheduler):
    """Ancestral sampling from the learned reverse process p(x_{t-1} | x_t) (Ho et al. 2020).

    With fewer steps than T, each step jumps from ``t`` to ``t - T//n`` using the posterior
    q(x_prev | x_t, x_0) of that jump, with variance ``sigma^2 = beta~`` ("fixed small").
    """

    def step(
        self,
        model_output: Tensor,
        timestep: int,
        sample: Tensor,
        generator: Generators = None,
    ) -> StepOutput:
        t = int(timestep)
        abar_t, abar_prev = (a.to(sample.device) for a in self._alphas(t))
        alpha_t = abar_t / abar_prev  # the alpha of this (possibly strided) jump
        beta_t = 1 - alpha_t
        x0, _ = self._x0_eps(model_output, t, sample)
        # posterior mean, DDPM eq. 7: a blend of the x_0 estimate and the current sample
        mean = (abar_prev.sqrt() * beta_t / (1 - abar_t)) * x0 + (
            alpha_t.sqrt() * (1 - abar_prev) / (1 - abar_t)
        ) * sample
        if self.previous_timestep(t) >= 0:  # the last step lands on x_0 itself: no noise
            variance = ((1 - abar_prev) / (1 - abar_t) * beta_t).clamp(min=1e-20)
            mean = mean + variance.sqrt() * _noise_like(sample, generator)
        return StepOutput(mean, x0)


class DDIMScheduler(_Scheduler):
    """DDIM (Song et al. 2021, https://arxiv.org/abs/2010.02502, eq. 12): the same trained model,
    a non-Markovian reverse process. ``eta = 0`` is deterministic; ``eta = 1`` matches DDPM's noise.

    With ``clip_sample``, the step's noise is re-derived from the clamped x_0 (``clipped_eps``,
    as GLIDE and lucidrains' DDIM do; diffusers' ``use_clipped_model_output=True``). Keeping the
    network's own noise beside a clamped x_0 (diffusers' default, ``clipped_eps=False``) makes
    ``x_prev`` a blend that no single (x_0, noise) pair explains: what the clamp took out of x_0
    is dropped rather than moved into the noise, and the sample drifts off the noise level the
    next step assumes. See the README's sampler section for what that costs.
    """

    def __init__(self, schedule: NoiseSchedule, clipped_eps: bool = True) -> None:
        super().__init__(schedule)
        self.clipped_eps = clipped_eps

    def step(
        self,
        model_output: Tensor,
        timestep: int,
        sample: Tensor,
        eta: float = 0.0,
        generator: Generators = None,
    ) -> StepOutput:
        t = int(timestep)
        abar_t, abar_prev = (a.to(sample.device) for a in self._alphas(t))
        x0, eps = self._x0_eps(model_output, t, sample, self.clipped_eps)
        sigma = eta * ((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)).sqrt()
        direction = (1 - abar_prev - sigma**2).sqrt() * eps  # "direction pointing to x_t"
        prev = abar_prev.sqrt() * x0 + direction
        if eta > 0:
            prev = prev + sigma * _noise_like(sample, generator)
        return StepOutput(prev, x0)


def make_scheduler(method: str, schedule: NoiseSchedule) -> DDPMScheduler | DDIMScheduler:
    return DDIMScheduler(schedule) if method == "ddim" else DDPMScheduler(schedule)
