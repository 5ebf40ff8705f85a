"""Sampling: DDPM, DDIM or a solver in noise level (DPM-Solver++ 2M and its SDE form, UniPC,
Euler, Euler ancestral, Heun)
from noise (or from noised input images, img2img), with classifier-free guidance and guidance by a
loss. The loop is :meth:`DiffusionSampler.sample`.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from tqdm.auto import tqdm

from genctl.errors import BadInput
from genctl.spec import DataInfo, Schema
from genctl.spec import noise as draw_noise
from genctl_ddpm.config import DDPMConfig
from genctl_ddpm.guidance import GuideFn, guidance_registry
from genctl_ddpm.scheduler import (
    SIGMA_METHODS,
    SigmaSpacing,
    Spacing,
    make_schedule,
    make_scheduler,
)

Method = Literal["ddpm", "ddim", "dpmpp_2m", "dpmpp_2m_sde", "unipc", "euler", "euler_a", "heun"]


class DDPMSampleOptions(Schema):
    """``genctl sample --plugin ddpm key=value ...``"""

    model_config = Schema.model_config | {"populate_by_name": True}

    # the defaults, DDIM-50 at eta 1 with trailing steps, measured best at ~50 network calls on
    # the MNIST recipe's model (FID table in the README); eta=0 is the deterministic DDIM
    method: Method = "ddim"
    # noise levels to step through: default 50 for ddim, all T for ddpm, DEFAULT_STEPS for the
    # others; network calls = steps, but 2 * steps - 1 for heun
    steps: int | None = Field(None, gt=0)
    eta: float = Field(1.0, ge=0)  # ddim: 0 deterministic, 1 as noisy as ddpm
    # where the steps fall in 0..T-1 (Lin et al. 2023): trailing and linspace start at T-1
    spacing: Spacing = "trailing"
    # karras: the solvers' noise levels spaced as Karras et al. 2022 (rho 7) from sigma(T-1) to
    # sigma(0), instead of at the spaced timesteps
    sigmas: SigmaSpacing | None = None
    # class-conditional models: the class to draw; none: the classes genctl gives (image i of
    # class i mod K); guidance=0 draws from the unconditional model
    class_: int | None = Field(None, alias="class", ge=0)
    # classifier-free guidance scale: 0 unconditional, 1 plain conditional, > 1 stronger
    guidance: float = 1.0
    guide: str | None = None  # guidance function: color, classifier, or one a plugin registers
    guide_scale: float | None = Field(None, ge=0)  # default: the guide's own
    # guide=color: the target [r, g, b] in [0, 1] ([v] for a grey model)
    color: list[float] | None = Field(None, min_length=1, max_length=3)
    classifier: str | None = None  # guide=classifier: checkpoint path
    target_class: int | None = Field(None, ge=0)  # guide=classifier: class to steer toward
    strength: float = Field(0.6, ge=0, le=1)  # img2img (--input): how far to noise the inputs
    # the UNet's input in the channels-last memory format (NHWC); the weights stay as they are
    channels_last: bool = False
    # bf16: the UNet under bf16 autocast (CUDA only); the sampler's own arithmetic stays fp32
    precision: Literal["fp32", "bf16"] = "fp32"


# default steps of the methods other than ddim (50) and ddpm (T)
DEFAULT_STEPS = {
    "dpmpp_2m": 20,
    "dpmpp_2m_sde": 20,
    "unipc": 20,
    "euler": 20,
    "euler_a": 20,
    "heun": 10,
}


def network_calls(method: str, steps: int) -> int:
    """UNet evaluations of a sampler run of ``steps`` steps (classifier-free guidance's
    conditional and unconditional halves go in one batched call): Heun evaluates twice per step
    but once on the last."""
    return 2 * steps - 1 if method == "heun" else steps


class UNetSampling:
    """What a sampler of an image UNet with an optional class embedding needs whatever it
    integrates: the device, classifier-free guidance in one batched call, the training grid, the
    class and img2img checks, inputs fitted to the model. The ddpm sampler and the families that
    reuse ddpm's UNet (flow) derive from it; each sets ``Options`` and ``unet``/``info``/
    ``num_classes``."""

    Options: type[Schema]
    # where a user finds a class-conditional recipe of the family (bad-input hint)
    conditional_hint = "Train with model.conditional=true on labelled data."

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def output(self, x: Tensor) -> Tensor:
        """What ``sample`` returns for the denoised ``x``: images in [0, 1] (a latent diffusion
        sampler decodes its latents here)."""
        return ((x + 1) / 2).clamp(0, 1)

    def guided(self, x: Tensor, tt: Tensor, label: Tensor | None, guidance: float) -> Tensor:
        """The UNet's output at ``(x, tt)``; with a class and ``guidance != 1``, classifier-free
        guidance: ``uncond + guidance * (cond - uncond)`` from one batched call."""
        if label is None or guidance == 1.0:
            return self.unet(x, tt, label)
        null = torch.full_like(label, self.num_classes)
        cond, uncond = self.unet(
            torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([label, null])
        ).chunk(2)
        return uncond + guidance * (cond - uncond)

    def preview(self, batch: dict[str, Tensor], generator: torch.Generator) -> tuple[Tensor, int]:
        """The training-time grid (the default sampler): for a class-conditional model one row per class,
        else ``len(batch)`` unconditional samples in a square grid."""
        n = next(iter(batch.values())).shape[0]
        if not self.num_classes:
            return self.sample(n, self.Options(), generator), max(round(n**0.5), 1)
        per_class = max(n // self.num_classes, 1)
        label = torch.arange(self.num_classes, device=self.device).repeat_interleave(per_class)
        return self.sample(len(label), self.Options(), generator, labels=label), per_class

    def check_classes(self, opts: Schema, label: Tensor | None) -> None:
        """``class``, ``guidance`` and given labels against the model: bad input where they do
        not fit."""
        given = opts.model_fields_set
        if label is not None and not self.num_classes:
            raise BadInput("labels given to a model that is not class-conditional")
        if opts.class_ is not None:
            if not self.num_classes:
                raise BadInput(
                    "class=... needs a class-conditional model; this one was trained unconditionally",
                    self.conditional_hint,
                )
            if opts.class_ >= self.num_classes:
                raise BadInput(
                    f"class={opts.class_} is out of range",
                    f"This model knows classes 0..{self.num_classes - 1}.",
                )
        elif label is None and "guidance" in given and opts.guidance != 1.0:
            raise BadInput(
                "guidance=... is classifier-free guidance toward a class", "Add class=N."
            )

    def check_inputs(self, opts: Schema, inputs: Tensor | None) -> None:
        """``strength`` and img2img inputs against the model: bad input where they do not fit."""
        if inputs is None and "strength" in opts.model_fields_set:
            raise BadInput("strength applies to img2img", "Give input images with --input DIR.")
        if inputs is not None and inputs.shape[1] != self.info.channels:
            raise BadInput(
                f"the input images have {inputs.shape[1]} channels, the model makes {self.info.channels}",
                "Load the inputs with the model's channel count.",
            )

    def _fit(self, x: Tensor) -> Tensor:
        """Inputs resized to the model's training size (the UNet is trained at one size)."""
        size = self.info.image_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(
                x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
        return x.clamp(-1, 1)


class DiffusionSampler(UNetSampling):
    # sample() takes a list of n generators, one per image (its start noise and every step's)
    generator_per_image = True
    # unguided sampling runs under torch.inference_mode (the same images as under no_grad, with
    # less autograd bookkeeping); guidance by a loss needs autograd and runs as before. False:
    # the no_grad path of before (bench/diffusion.py's baseline)
    inference_mode = True
    Options = DDPMSampleOptions
    conditional_hint = (
        "Train with model.conditional=true on labelled data (recipes/ddpm-mnist-cfg.yaml)."
    )

    def __init__(self, config: DDPMConfig, nets: dict[str, nn.Module], info: DataInfo) -> None:
        self.config = config
        self.unet = nets.get("unet_ema", nets["unet"])  # the trainer's EMA weights when kept
        self.info = info
        self.schedule = make_schedule(config)
        self.num_classes = info.num_classes if config.conditional else 0

    def sample(
        self,
        n: int,
        options: DDPMSampleOptions,
        generator: torch.Generator,
        inputs: Tensor | None = None,
        labels: Tensor | None = None,
    ) -> Tensor:
        """``n`` images in [0, 1]; image i of class ``labels[i]`` (genctl gives them to a
        class-conditional model), else of ``class``, else of the unconditional model."""
        opts = options
        label = None if labels is None else labels.to(self.device)
        self.check(opts, inputs, label)
        if inputs is not None:
            n = inputs.shape[0]
        scheduler = make_scheduler(opts.method, self.schedule)
        steps = self.steps(opts)
        scheduler.set_timesteps(steps, opts.spacing, opts.sigmas)
        timesteps = scheduler.timesteps.tolist()  # one network call each
        device = self.device
        shape = (n, self.info.channels, self.info.image_size, self.info.image_size)
        noise = draw_noise("randn", shape, generator).to(device)
        if inputs is None:
            x = noise
        else:  # img2img: noise the inputs to the level ~strength*steps from the end, denoise
            x0 = self._fit(inputs.to(device))
            keep = round(steps * opts.strength)
            if not keep:
                return self.output(x0)
            timesteps = scheduler.set_begin_index(steps - keep)
            x = scheduler.add_noise(x0, noise, torch.full((n,), timesteps[0]))
        if label is None and opts.class_ is not None:
            label = torch.full((n,), opts.class_, device=device)
        guide = self._guide(opts, device)
        step_options = {"eta": opts.eta} if opts.method == "ddim" else {}
        fast = guide is None and self.inference_mode
        layout = torch.channels_last if opts.channels_last else torch.contiguous_format
        autocast = (
            torch.autocast(device.type, dtype=torch.bfloat16)
            if opts.precision == "bf16"
            else nullcontext()
        )

        was_training = self.unet.training
        self.unet.eval()  # dropout off
        try:
            with torch.inference_mode() if fast else nullcontext():
                for t in tqdm(timesteps, desc=f"{opts.method} sampling", leave=False, disable=None):
                    x = x.contiguous(memory_format=layout)
                    if guide is None:
                        with torch.no_grad(), autocast:
                            out = self.predict(x, t, label, opts.guidance).float()
                    else:  # move x against the gradient of the guide's loss on the x_0 estimate
                        fn, scale = guide
                        x = x.detach().requires_grad_(True)
                        with torch.enable_grad():
                            with autocast:
                                out = self.predict(x, t, label, opts.guidance).float()
                            x0 = scheduler.pred_original_sample(out, t, x)
                            loss = fn(x0, torch.full((n,), t, device=device)).sum()
                            grad = torch.autograd.grad(loss, x)[0]
                        x, out = (x - scale * grad).detach(), out.detach()
                    x = scheduler.step(out, t, x, generator=generator, **step_options).prev_sample
        finally:
            self.unet.train(was_training)
        # a normal tensor again (callers may change it in place), in the default layout
        return self.output(
            x.clone(memory_format=torch.contiguous_format) if fast else x.contiguous()
        )

    def steps(self, opts: DDPMSampleOptions) -> int:
        """The number of steps (noise levels) a run with ``opts`` takes."""
        if opts.steps:
            return opts.steps
        if opts.method == "ddpm":
            return self.config.timesteps
        # the defaults cannot exceed a short schedule's T
        return min(DEFAULT_STEPS.get(opts.method, 50), self.config.timesteps)

    def predict(self, x: Tensor, t: int, label: Tensor | None, guidance: float) -> Tensor:
        """The UNet's output at ``x_t`` (classifier-free guided with a class, ``guided``)."""
        return self.guided(x, torch.full((x.shape[0],), t, device=x.device), label, guidance)

    # ---------------------------------------------------------------- checks and helpers

    def check(
        self, opts: DDPMSampleOptions, inputs: Tensor | None, label: Tensor | None = None
    ) -> None:
        """Options that are valid alone but not for this model or together: bad input."""
        given = opts.model_fields_set
        self.check_classes(opts, label)
        if opts.method != "ddim" and "eta" in given:
            raise BadInput("eta applies to method=ddim only", "Drop eta, or use method=ddim.")
        if opts.sigmas is not None:
            if opts.method not in SIGMA_METHODS:
                raise BadInput(
                    f"sigmas={opts.sigmas} applies to the methods {', '.join(SIGMA_METHODS)}",
                    f"Drop sigmas, or use one of them instead of method={opts.method}.",
                )
            if "spacing" in given:
                raise BadInput(
                    f"sigmas={opts.sigmas} places the noise levels itself; spacing does not apply",
                    "Drop spacing or sigmas.",
                )
        if self.config.zero_terminal_snr and opts.spacing == "leading" and opts.sigmas is None:
            raise BadInput(
                "spacing=leading never starts at the last timestep, where a zero-terminal-SNR "
                "model's pure noise belongs",
                "Use spacing=trailing (the default) or linspace.",
            )
        if opts.steps is not None and opts.steps > self.config.timesteps:
            raise BadInput(
                f"steps={opts.steps} exceeds the {self.config.timesteps} training timesteps"
            )
        if opts.guide is None:
            stray = sorted(given & {"guide_scale", "color", "classifier", "target_class"})
            if stray:
                raise BadInput(
                    f"{', '.join(stray)} given without a guidance function",
                    "Add guide=color or guide=classifier.",
                )
        if opts.precision == "bf16" and self.device.type != "cuda":
            raise BadInput(
                f"precision=bf16 autocasts the UNet on CUDA only; this model is on {self.device.type}",
                "Drop precision (fp32), or sample on a GPU (--device cuda).",
            )
        self.check_inputs(opts, inputs)

    def _guide(self, opts: DDPMSampleOptions, device: torch.device) -> tuple[GuideFn, float] | None:
        if opts.guide is None:
            return None
        guide = guidance_registry().get(opts.guide)
        scale = guide.default_scale if opts.guide_scale is None else opts.guide_scale
        return guide.make(opts, self.info, device), scale
