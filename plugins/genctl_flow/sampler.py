"""Sampling: the probability-flow ODE ``dx/dt = v(x, t)`` integrated from noise at t = 1 to an
image at t = 0 with Euler or Heun steps on a uniform time grid, with classifier-free guidance and
img2img. The loop is :meth:`FlowSampler.sample`; the integrator, :func:`integrate`, knows nothing
of the UNet.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from genctl_ddpm.sampler import UNetSampling
from pydantic import Field
from torch import Tensor, nn

from genctl.spec import DataInfo, Schema
from genctl.spec import noise as draw_noise
from genctl_flow.config import TIME_SCALE, FlowConfig
from genctl_flow.loss import interpolate

Method = Literal["euler", "heun"]
Velocity = Callable[[Tensor, float], Tensor]  # (x, t in [0, 1]) -> v, shaped like x

# the defaults, measured on the MNIST recipe's model (FID table in the README): Heun at 19
# network calls scored best at about 20 calls, and 49 calls of either method gained 0.1 FID
DEFAULT_METHOD: Method = "heun"
DEFAULT_STEPS = {"euler": 20, "heun": 10}


class FlowSampleOptions(Schema):
    """``genctl sample --plugin flow key=value ...``"""

    model_config = Schema.model_config | {"populate_by_name": True}

    method: Method = DEFAULT_METHOD  # the ODE solver: euler (1st order) or heun (2nd order)
    # time steps from t = 1 to 0 (uniform); network calls = steps, but 2 * steps - 1 for heun;
    # default DEFAULT_STEPS of the method
    steps: int | None = Field(None, gt=0)
    # class-conditional models: the class to draw; none: the classes genctl gives (image i of
    # class i mod K); guidance=0 draws from the unconditional model
    class_: int | None = Field(None, alias="class", ge=0)
    # classifier-free guidance scale: 0 unconditional, 1 plain conditional, > 1 stronger
    guidance: float = 1.0
    strength: float = Field(0.6, ge=0, le=1)  # img2img (--input): the time t to start from


def network_calls(method: str, steps: int) -> int:
    """Velocity evaluations of ``steps`` steps: Heun evaluates twice per step but once on the
    last (its Euler step to t = 0 lands on the x_0 estimate ``x - t v``)."""
    return 2 * steps - 1 if method == "heun" else steps


def time_grid(steps: int) -> list[float]:
    """``steps + 1`` times, uniform from 1 down to 0."""
    return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64).tolist()


def integrate(velocity: Velocity, x: Tensor, times: list[float], method: Method) -> Tensor:
    """Integrate ``dx/dt = velocity(x, t)`` from ``times[0]`` through each time in turn.

    Euler: ``x += h v(x, t)``. Heun (the trapezoid rule with an Euler predictor, Karras et al.
    2022, alg. 1): ``x += h (v(x, t) + v(x_euler, t_next)) / 2``, except that the step to t = 0
    is Euler's. Both are exact for a constant velocity; Heun's error shrinks as ``h^2``.
    """
    for t, t_next in zip(times[:-1], times[1:], strict=True):
        h = t_next - t
        d = velocity(x, t)
        x_next = x + h * d
        if method == "heun" and t_next > 0:
            x_next = x + h * (d + velocity(x_next, t_next)) / 2
        x = x_next
    return x


class FlowSampler(UNetSampling):
    """ddpm's UNet sampling (device, classifier-free guidance, the training grid, the class and
    img2img checks: ``UNetSampling``) with the flow's ODE in ``sample``."""

    # sample() takes a list of n generators, one per image (its start noise)
    generator_per_image = True
    Options = FlowSampleOptions

    def __init__(self, config: FlowConfig, nets: dict[str, nn.Module], info: DataInfo) -> None:
        self.config = config
        self.unet = nets.get("unet_ema", nets["unet"])  # the trainer's EMA weights when kept
        self.info = info
        self.num_classes = info.num_classes if config.conditional else 0

    def sample(
        self,
        n: int,
        options: FlowSampleOptions,
        generator: torch.Generator | list[torch.Generator],
        inputs: Tensor | None = None,
        labels: Tensor | None = None,
    ) -> Tensor:
        """``n`` images in [0, 1]; image i of class ``labels[i]`` (genctl gives them to a
        class-conditional model), else of ``class``, else of the unconditional model. The only
        randomness is the start noise: the same generators give the same images."""
        opts = options
        label = None if labels is None else labels.to(self.device)
        self.check(opts, inputs, label)
        if inputs is not None:
            n = inputs.shape[0]
        device = self.device
        steps = self.steps(opts)
        times = time_grid(steps)
        shape = (n, self.info.channels, self.info.image_size, self.info.image_size)
        noise = draw_noise("randn", shape, generator).to(device)
        if inputs is None:
            x = noise
        else:  # img2img: the inputs moved to t ~ strength along their path to noise
            x0 = self._fit(inputs.to(device))
            keep = round(steps * opts.strength)
            if not keep:
                return self.output(x0)
            times = times[steps - keep :]
            x = interpolate(x0, noise, torch.full((n,), times[0], device=device))
        if label is None and opts.class_ is not None:
            label = torch.full((n,), opts.class_, device=device)

        def velocity(x: Tensor, t: float) -> Tensor:
            return self.predict(x, t, label, opts.guidance)

        was_training = self.unet.training
        self.unet.eval()  # dropout off
        try:
            with torch.no_grad():
                x = integrate(velocity, x, times, opts.method)
        finally:
            self.unet.train(was_training)
        return self.output(x)

    def steps(self, opts: FlowSampleOptions) -> int:
        return opts.steps or DEFAULT_STEPS[opts.method]

    def predict(self, x: Tensor, t: float, label: Tensor | None, guidance: float) -> Tensor:
        """The velocity at ``x``, time ``t`` (classifier-free guided with a class, ``guided``)."""
        return self.guided(
            x, torch.full((x.shape[0],), t * TIME_SCALE, device=x.device), label, guidance
        )

    def check(self, opts: FlowSampleOptions, inputs: Tensor | None, label: Tensor | None) -> None:
        """Options that are valid alone but not for this model or together: bad input."""
        self.check_classes(opts, label)
        self.check_inputs(opts, inputs)
