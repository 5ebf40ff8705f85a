"""The noise schedule and the reverse-process schedulers, kept apart from the network.

Diffusers-style interface: a scheduler knows the forward process (``add_noise``), is told how many
sampling steps to take (``set_timesteps``), and turns the network's prediction at one step into
the next, less noisy sample (``step``). The sampling loop that calls them is in ``sampler.py``:
one network call per entry of ``timesteps`` (Heun lists each inner noise level twice).

Two families: the DDPM and DDIM schedulers step between training timesteps; the solvers of the
probability-flow ODE (Euler, Heun, DPM-Solver++ 2M, UniPC) and Euler ancestral step between noise
levels ``sigma = sqrt((1 - abar) / abar)`` (:class:`SigmaScheduler`), which may also fall between
timesteps (``sigmas="karras"``). Every scheduler takes and returns the sample as the network sees
it, ``x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps``, so the loop is the same for all.

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
SigmaSpacing = Literal["karras"]


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
        zero_terminal_snr: bool = False,
    ) -> None:
        betas = make_betas(schedule, timesteps, beta_start, beta_end)
        if zero_terminal_snr:
            betas = rescale_zero_terminal_snr(betas)
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


def rescale_zero_terminal_snr(betas: Tensor) -> Tensor:
    """Betas whose last step leaves no signal at all (Lin et al. 2023, "Common Diffusion Noise
    Schedules and Sample Steps are Flawed", https://arxiv.org/abs/2305.08891, algorithm 1).

    ``sqrt(abar)`` is shifted so that it ends at exactly 0 and scaled so that it still starts where
    it did: the model then trains on pure noise at ``t = T - 1``, the very input sampling starts
    from (the linear schedule leaves ``sqrt(abar_T) = 0.0064`` of the image there, which a model
    learns to use, so that at sampling time it expects a mean brightness the noise lacks).
    With ``abar_T = 0`` the noise fully explains ``x_T``, so epsilon prediction cannot give x_0
    there: such a model must predict v (the config says so).
    """
    root = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * first / (first - last)
    abar = root**2
    alphas = torch.cat([abar[:1], abar[1:] / abar[:-1]])
    return 1.0 - alphas


def make_schedule(config: DDPMConfig) -> NoiseSchedule:
    """The schedule a recipe's ``model:`` section describes."""
    return NoiseSchedule(
        config.beta_schedule,
        config.timesteps,
        config.beta_start,
        config.beta_end,
        config.prediction,
        config.clip_sample,
        config.zero_terminal_snr,
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


def spaced_timesteps(T: int, n: int, spacing: Spacing) -> Tensor:
    """``n`` of the timesteps ``0 .. T-1``, from the noisiest down, spaced as in Lin et al. 2023,
    table 2 (https://arxiv.org/abs/2305.08891) and diffusers' ``timestep_spacing``:

    - ``leading``: ``k * (T // n)`` for k = n-1 .. 0 (DDIM's, Stable Diffusion's): the first
      step is at ``T - T//n``, never at ``T - 1``, where the sampler's pure noise belongs;
    - ``trailing``: ``round(T - k * T/n) - 1`` for k = 0 .. n-1: starts at ``T - 1`` and
      ends at ``T/n - 1``, from where the last step goes straight to x_0;
    - ``linspace``: ``round(linspace(0, T-1, n))`` reversed: from ``T - 1`` down to 0.
    """
    if not 1 <= n <= T:
        raise ValueError(f"steps must be between 1 and {T}, got {n}")
    if spacing == "leading":
        return torch.arange(n - 1, -1, -1) * (T // n)
    if spacing == "trailing":
        return torch.arange(T, 0, -T / n, dtype=torch.float64).round().long() - 1
    if spacing == "linspace":
        return torch.linspace(0, T - 1, n, dtype=torch.float64).round().long().flip(0)
    raise ValueError(f"unknown spacing {spacing!r}; expected leading, trailing or linspace")


class _Scheduler:
    """Shared by DDPM and DDIM: the schedule, and the sampling timesteps with their spacing."""

    calls_per_step = 1  # network calls per step

    def __init__(self, schedule: NoiseSchedule) -> None:
        self.schedule = schedule
        self.num_inference_steps = schedule.num_train_timesteps
        self.spacing: Spacing = "leading"
        self._use(torch.arange(schedule.num_train_timesteps - 1, -1, -1))

    def set_timesteps(
        self,
        num_inference_steps: int,
        spacing: Spacing = "leading",
        sigmas: SigmaSpacing | None = None,
    ) -> None:
        """Use ``num_inference_steps`` timesteps spaced by ``spacing`` (:func:`spaced_timesteps`).
        Each step goes from its timestep to the next one in this list; the last one to x_0.
        ``sigmas`` is for the sigma-space schedulers; these two step between timesteps only.
        """
        if sigmas is not None:
            raise ValueError(f"sigmas={sigmas!r} applies to the sigma-space schedulers only")
        timesteps = spaced_timesteps(
            self.schedule.num_train_timesteps, num_inference_steps, spacing
        )
        self.num_inference_steps, self.spacing = num_inference_steps, spacing
        self._use(timesteps)

    def set_begin_index(self, step: int) -> list[int]:
        """Start at the ``step``-th timestep (img2img: the input noised to that level); returns
        the timesteps left to run."""
        return self.timesteps.tolist()[step:]

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


# ---------------------------------------------------------------- solvers in sigma space


def karras_sigmas(sigma_max: float, sigma_min: float, n: int, rho: float = 7.0) -> Tensor:
    """``n`` noise levels from ``sigma_max`` down to ``sigma_min``, evenly spaced in
    ``sigma^(1/rho)`` (Karras et al. 2022, https://arxiv.org/abs/2206.00364, eq. 5, rho = 7):
    denser at low noise, where detail is decided. Float64."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    hi, lo = float(sigma_max) ** (1 / rho), float(sigma_min) ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def sigma_to_timestep(sigmas: Tensor, table: Tensor) -> Tensor:
    """The (fractional) timestep of each noise level: linear in ``log sigma`` between the two
    training timesteps whose levels bracket it (``table[t]`` is the level of timestep t). Float64."""
    log_table = table.double().log()
    log_sigma = sigmas.double().clamp(min=1e-10).log()
    # index of the last table level <= sigma (the table increases with t)
    low = (log_sigma[None, :] >= log_table[:, None]).long().cumsum(0).argmax(0)
    low = low.clamp(max=len(table) - 2)
    lo, hi = log_table[low], log_table[low + 1]
    w = ((lo - log_sigma) / (lo - hi)).clamp(0, 1)
    return low + w


class SigmaScheduler:
    """Shared by the schedulers that step between noise levels ``sigma = sqrt((1-abar)/abar)``,
    the noise-to-signal ratio (Karras et al. 2022, https://arxiv.org/abs/2206.00364).

    In ``y = x_t / sqrt(abar) = x_0 + sigma eps`` the reverse process is the ODE
    ``dy/dsigma = (y - x_0(y, sigma)) / sigma`` (plus noise for ancestral sampling), which the
    subclasses solve. They take and return ``x_t`` (``y / sqrt(1 + sigma^2)``), what the network
    sees, so the sampling loop needs no input scaling.

    ``set_timesteps(n, spacing)`` puts the levels at the spaced timesteps; with
    ``sigmas="karras"`` they follow Karras' spacing from the level of ``T - 1`` down to that of
    0, at fractional timesteps (the UNet's sinusoidal time embedding takes them). After the ``n``
    levels comes 0: the last step lands on the x_0 estimate itself. With ``clip_sample`` every
    x_0 estimate is clamped to [-1, 1] and the step uses the clamped one (as DDIM re-derives
    its noise). ``abar`` is floored at ``2^-24`` (sigma 4096): a zero-terminal-SNR schedule's
    ``abar = 0`` at ``T - 1`` (as diffusers does for it) and the cosine schedule's ``2.4e-9``
    there (sigma 20,000; diffusers keeps that one), whose start is pure noise either way.
    """

    calls_per_step = 1  # network calls per noise level (Heun: 2)

    def __init__(self, schedule: NoiseSchedule) -> None:
        self.schedule = schedule
        abar = schedule.alphas_cumprod.clamp(min=2.0**-24)
        self.sigma_table = ((1 - abar) / abar).sqrt()  # float32, as the schedule
        self.set_timesteps(schedule.num_train_timesteps)

    def set_timesteps(
        self,
        num_inference_steps: int,
        spacing: Spacing = "leading",
        sigmas: SigmaSpacing | None = None,
    ) -> None:
        T, n = self.schedule.num_train_timesteps, num_inference_steps
        if sigmas == "karras":
            if not 1 <= n <= T:
                raise ValueError(f"steps must be between 1 and {T}, got {n}")
            levels = karras_sigmas(self.sigma_table[-1], self.sigma_table[0], n)
            timesteps = sigma_to_timestep(levels, self.sigma_table)
        elif sigmas is None:
            timesteps = spaced_timesteps(T, n, spacing)
            levels = self.sigma_table[timesteps]
        else:
            raise ValueError(f"unknown sigmas {sigmas!r}; expected karras")
        self.num_inference_steps, self.spacing = n, spacing
        self.sigmas = torch.cat([levels.float(), torch.zeros(1)])  # n levels, then x_0
        self.level_timesteps = timesteps.float()
        self.timesteps = self._call_timesteps()
        self.set_begin_index(0)

    def _call_timesteps(self) -> Tensor:
        """The timestep of each network call: one per level."""
        return self.level_timesteps

    def set_begin_index(self, step: int) -> list[float]:
        """Start at the ``step``-th noise level (img2img) with no history; returns the timesteps
        of the network calls left."""
        self._index = step * self.calls_per_step
        self._begin = self._index
        self._reset()
        return self.timesteps.tolist()[self._index :]

    def _reset(self) -> None:
        """Forget what earlier steps left (multistep solvers keep their x_0 estimates)."""

    def _level(self) -> int:
        """The noise level the current network call is made at."""
        return self._index

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """``x0`` noised to the level of each item's timestep (one of ``timesteps``)."""
        match = t.to(self.level_timesteps)[:, None] == self.level_timesteps[None, :]
        if not match.any(1).all():
            raise ValueError("add_noise takes timesteps of this scheduler's levels")
        s = self.sigmas[match.float().argmax(1)].to(x0.device, x0.dtype)
        s = s.reshape(-1, *([1] * (x0.dim() - 1)))
        return (x0 + s * noise) / (1 + s**2).sqrt()

    @staticmethod
    def _alpha_sigma(s: Tensor) -> tuple[Tensor, Tensor]:
        """``sqrt(abar)`` and ``sqrt(1 - abar)`` of noise level ``s``."""
        alpha = 1 / (s**2 + 1).sqrt()
        return alpha, s * alpha

    def _x0(self, model_output: Tensor, sample: Tensor, s: Tensor) -> Tensor:
        """The x_0 the network's output implies at ``x_t`` of level ``s``, clamped with
        ``clip_sample``. (From ``s`` directly: ``1 - abar`` rounds badly near ``s = 0``.)"""
        alpha, sigma = (a.to(sample.device) for a in self._alpha_sigma(s))
        if self.schedule.prediction == "epsilon":
            x0 = (sample - sigma * model_output) / alpha
        else:
            x0 = alpha * sample - sigma * model_output
        return x0.clamp(-1, 1) if self.schedule.clip_sample else x0

    def pred_original_sample(self, model_output: Tensor, timestep: float, sample: Tensor) -> Tensor:
        """The model's estimate of x_0 at the current call (unclipped: guidance differentiates
        it). ``timestep`` is the current call's; the level comes from the call count."""
        alpha, sigma = (a.to(sample.device) for a in self._alpha_sigma(self.sigmas[self._level()]))
        if self.schedule.prediction == "epsilon":
            return (sample - sigma * model_output) / alpha
        return alpha * sample - sigma * model_output

    def _levels(self) -> tuple[Tensor, Tensor]:
        i = self._index
        return self.sigmas[i].to(torch.float32), self.sigmas[i + 1].to(torch.float32)


class EulerScheduler(SigmaScheduler):
    """Euler's method on the probability-flow ODE (Karras et al. 2022, algorithm 1 without the
    second-order correction): ``y_next = y + (sigma_next - sigma) (y - x_0) / sigma``. One
    network call per step. With the levels of DDIM's timesteps, this is DDIM at eta 0."""

    def step(
        self, model_output: Tensor, timestep: float, sample: Tensor, generator: Generators = None
    ) -> StepOutput:
        s, s_next = self._levels()
        x0 = self._x0(model_output, sample, s)
        y = sample * (1 + s**2).sqrt()
        y = y + (s_next - s) * (y - x0) / s
        self._index += 1
        return StepOutput(y / (1 + s_next**2).sqrt(), x0)


class EulerAncestralScheduler(SigmaScheduler):
    """Euler ancestral (k-diffusion's ``sample_euler_ancestral``): an Euler step down to
    ``sigma_down``, then fresh noise up to ``sigma_next``, where ``sigma_up^2 = sigma_next^2
    (sigma^2 - sigma_next^2) / sigma^2`` and ``sigma_down^2 = sigma_next^2 - sigma_up^2``: the
    DDPM posterior's noise in sigma space. One network call per step; the last adds no noise."""

    def step(
        self, model_output: Tensor, timestep: float, sample: Tensor, generator: Generators = None
    ) -> StepOutput:
        s, s_next = self._levels()
        x0 = self._x0(model_output, sample, s)
        s_up = (s_next**2 * (s**2 - s_next**2) / s**2).sqrt()
        s_down = (s_next**2 - s_up**2).clamp(min=0).sqrt()
        y = sample * (1 + s**2).sqrt()
        y = y + (s_down - s) * (y - x0) / s
        if s_next > 0:
            y = y + s_up * _noise_like(sample, generator)
        self._index += 1
        return StepOutput(y / (1 + s_next**2).sqrt(), x0)


class HeunScheduler(SigmaScheduler):
    """Heun's second-order method (Karras et al. 2022, algorithm 1, deterministic): an Euler
    step to ``sigma_next``, the slope there from a second network call, then the step again from
    ``sigma`` with the mean of the two slopes. The last step, to 0, is Euler alone (the slope at
    0 is not defined). So ``n`` levels cost ``2n - 1`` network calls: ``timesteps`` lists every
    inner level twice and each ``step`` call is one half (diffusers' ``HeunDiscreteScheduler``).
    """

    calls_per_step = 2

    def _call_timesteps(self) -> Tensor:
        t = self.level_timesteps
        return torch.cat([t[:1], t[1:].repeat_interleave(2)])

    def _reset(self) -> None:
        self._y = self._slope = None  # the state between the two halves of a step

    def _level(self) -> int:
        return (self._index + 1) // 2  # calls 2k-1 (the correction) and 2k are at level k

    def step(
        self, model_output: Tensor, timestep: float, sample: Tensor, generator: Generators = None
    ) -> StepOutput:
        k = self._level()
        if self._slope is None:  # the Euler half, from level k
            s, s_next = self.sigmas[k], self.sigmas[k + 1]
            x0 = self._x0(model_output, sample, s)
            y = sample * (1 + s**2).sqrt()
            slope = (y - x0) / s
            y_next = y + (s_next - s) * slope
            if s_next > 0:  # a correction follows, at s_next
                self._y, self._slope = y, slope
        else:  # the correction: the slope at the Euler point, averaged with the first
            s, s_next = self.sigmas[k - 1], self.sigmas[k]
            x0 = self._x0(model_output, sample, s_next)
            slope = (sample * (1 + s_next**2).sqrt() - x0) / s_next
            y_next = self._y + (s_next - s) * (self._slope + slope) / 2
            self._reset()
        self._index += 1
        return StepOutput(y_next / (1 + s_next**2).sqrt(), x0)


def _log_snr(s: Tensor) -> Tensor:
    """``lambda = log(sqrt(abar) / sqrt(1 - abar)) = -log(sigma)``, DPM-Solver's time variable."""
    alpha, sigma = SigmaScheduler._alpha_sigma(s)
    return alpha.log() - sigma.log()


class DPMSolverMultistepScheduler(SigmaScheduler):
    """DPM-Solver++(2M) (Lu et al. 2022, https://arxiv.org/abs/2211.01095, algorithm 2): the
    exact solution of the ODE's linear part in ``lambda = -log(sigma)``, with the x_0 estimate
    extrapolated linearly from this step's and the previous step's (the "midpoint" form):

        x_next = (sigma_t_next / sigma_t) x - alpha_next (e^-h - 1) D,
        D = x0 + (x0 - x0_prev) / (2 r),  h = lambda_next - lambda,  r = h_prev / h

    in ``x_t = alpha x_0 + sigma_t eps`` terms. One network call per step. The first step (no
    previous estimate) and the last (to sigma 0, where it lands on the x_0 estimate) are first
    order, as diffusers' ``DPMSolverMultistepScheduler`` with ``final_sigmas_type="zero"``.
    """

    def _reset(self) -> None:
        self._previous_x0: Tensor | None = None

    def step(
        self, model_output: Tensor, timestep: float, sample: Tensor, generator: Generators = None
    ) -> StepOutput:
        i = self._index
        s, s_next = self._levels()
        x0 = self._x0(model_output, sample, s)
        if s_next == 0:
            prev = x0
        else:
            alpha_next, sigma_next = self._alpha_sigma(s_next)
            _, sigma = self._alpha_sigma(s)
            h = _log_snr(s_next) - _log_snr(s)
            d = x0
            if self._previous_x0 is not None:
                r = (_log_snr(s) - _log_snr(self.sigmas[i - 1])) / h
                d = x0 + (x0 - self._previous_x0) / (2 * r)
            prev = self._update(sample, d, h, alpha_next, sigma_next, sigma, generator)
        self._previous_x0 = x0
        self._index += 1
        return StepOutput(prev, x0)

    def _update(self, x, d, h, alpha_next, sigma_next, sigma, generator: Generators) -> Tensor:
        """From ``x`` (noise std ``sigma``) to the next level, with the x_0 extrapolation ``d``."""
        return (sigma_next / sigma) * x - alpha_next * torch.expm1(-h) * d


class DPMSolverSDEScheduler(DPMSolverMultistepScheduler):
    """SDE-DPM-Solver++(2M) (Lu et al. 2022, https://arxiv.org/abs/2211.01095, appendix; diffusers'
    ``algorithm_type="sde-dpmsolver++"``): the same multistep x_0 extrapolation, on the reverse
    SDE instead of the ODE, so each step forgets part of the sample and adds fresh noise:

        x_next = (sigma_t_next / sigma_t) e^-h x + alpha_next (1 - e^-2h) D
                 + sigma_t_next sqrt(1 - e^-2h) z

    As DDPM does to DDIM, the noise dilutes an early, poor x_0 estimate instead of carrying it
    to the end. One network call per step; the last step lands on the x_0 estimate.
    """

    def _update(self, x, d, h, alpha_next, sigma_next, sigma, generator: Generators) -> Tensor:
        noise = _noise_like(x, generator)
        return (
            (sigma_next / sigma) * torch.exp(-h) * x
            - alpha_next * torch.expm1(-2 * h) * d
            + sigma_next * (-torch.expm1(-2 * h)).sqrt() * noise
        )


class UniPCScheduler(SigmaScheduler):
    """UniPC (Zhao et al. 2023, https://arxiv.org/abs/2302.04867), order 2, the B(h) = e^h - 1
    variant ("bh2") on x_0 estimates: at each step the sample the previous step predicted is
    first corrected (UniC) with the x_0 estimate made at it, which costs no extra network call,
    then the next is predicted (UniP-2, DPM-Solver++(2M)'s update with UniPC's coefficient).

    In ``x_t = alpha x_0 + sigma_t eps`` terms, from level s to t, ``h = lambda_t - lambda_s``:

        base    = (sigma_t / sigma_s) x_s - alpha_t (e^-h - 1) m_s
        UniP-2  = base - alpha_t (e^-h - 1) rho_p D,  D = (m_prev - m_s) / r,  rho_p = 1/2
        UniC    = base - alpha_t (e^-h - 1) (rho_0 D + rho_1 (m_t - m_s))

    where m are x_0 estimates, ``r = (lambda_prev - lambda_s) / h`` and (rho_0, rho_1) solve
    ``[[1, 1], [r, 1]] rho = [phi_2, 2 phi_3] / (e^-h - 1)`` with ``phi_2 = (e^-h - 1)/(-h) - 1``
    and ``phi_3 = phi_2/(-h) - 1/2`` (the paper's ``B(h)`` and ``phi_k``; UniC-1 takes rho_1 = 1/2).
    The first step and the last are first order, the corrector's order is the predictor's it
    corrects, and the final x (at sigma 0) is not corrected: diffusers' ``UniPCMultistepScheduler``
    with ``solver_type="bh2"``, ``solver_order=2``.
    """

    def _reset(self) -> None:
        self._x0s: list[Tensor] = []  # the last two x_0 estimates, oldest first
        self._last_sample: Tensor | None = None  # the (corrected) x the last prediction left
        self._last_order = 0

    def _update(self, x: Tensor, i: int, to: int, m: Tensor, order: int, m_t=None) -> Tensor:
        """From ``x`` at level ``i`` to level ``to``: UniP (``m_t`` None) or UniC."""
        s, s_t = self.sigmas[i], self.sigmas[to]
        alpha_t, sigma_t = self._alpha_sigma(s_t)
        _, sigma_s = self._alpha_sigma(s)
        h = _log_snr(s_t) - _log_snr(s)
        b_h = torch.expm1(-h)  # B(h) = h phi_1(h) at -h, the "bh2" choice
        x_next = (sigma_t / sigma_s) * x - alpha_t * b_h * m
        rest = 0
        if order == 2:
            r = (_log_snr(self.sigmas[i - 1]) - _log_snr(s)) / h
            d = (self._x0s[-2] - m) / r
            if m_t is None:
                rest = 0.5 * d
            else:
                phi_2 = b_h / -h - 1
                phi_3 = phi_2 / -h - 0.5
                b1, b2 = phi_2 / b_h, 2 * phi_3 / b_h
                rho_0 = (b1 - b2) / (1 - r)
                rest = rho_0 * d + (b1 - rho_0) * (m_t - m)
        elif m_t is not None:
            rest = 0.5 * (m_t - m)
        return x_next - alpha_t * b_h * rest

    def step(
        self, model_output: Tensor, timestep: float, sample: Tensor, generator: Generators = None
    ) -> StepOutput:
        i = self._index
        s, s_next = self._levels()
        x0 = self._x0(model_output, sample, s)
        if self._last_sample is not None:  # UniC: correct the sample we are at with x0
            sample = self._update(
                self._last_sample, i - 1, i, self._x0s[-1], self._last_order, m_t=x0
            )
        self._x0s = [*self._x0s[-1:], x0]
        order = min(2, self.num_inference_steps - i, len(self._x0s))
        self._last_sample, self._last_order = sample, order
        if s_next == 0:
            prev = x0
        else:
            prev = self._update(sample, i, i + 1, x0, order)
        self._index += 1
        return StepOutput(prev, x0)


SCHEDULERS: dict[str, type[_Scheduler] | type[SigmaScheduler]] = {
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
    "dpmpp_2m": DPMSolverMultistepScheduler,
    "dpmpp_2m_sde": DPMSolverSDEScheduler,
    "unipc": UniPCScheduler,
    "euler": EulerScheduler,
    "euler_a": EulerAncestralScheduler,
    "heun": HeunScheduler,
}
SIGMA_METHODS = tuple(k for k, v in SCHEDULERS.items() if issubclass(v, SigmaScheduler))


def make_scheduler(method: str, schedule: NoiseSchedule) -> _Scheduler | SigmaScheduler:
    """The scheduler of a sampler ``method`` (a key of :data:`SCHEDULERS`)."""
    return SCHEDULERS[method](schedule)
