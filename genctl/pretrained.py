"""Pretrained pipelines from Hugging Face diffusers: ``genctl sample --pretrained`` and
``genctl evaluate --pretrained``.

A pipeline saved with ``save_pretrained`` (a folder with ``model_index.json``), or a Hub id, is
loaded with diffusers and wrapped in :class:`PipelineSampler`, a sampler as genctl's own families
have: ``sample(n, options, generator)`` returns N x C x H x W images in [0, 1], and, given a list
of generators, image ``i`` is drawn from generator ``i`` (diffusers pipelines take a list), so
``genctl sample`` gives the same images at any batch size. Two kinds are known:

* ``unconditional``: pipelines without a prompt (``DDPMPipeline``, ``DDIMPipeline``, such as
  ``google/ddpm-cifar10-32``);
* ``text_to_image``: pipelines that take ``prompt`` (Stable Diffusion); with ``--input`` images
  they become their image-to-image pipeline (``AutoPipelineForImage2Image.from_pipe``), which
  noises each input to ``strength`` and denoises it.

Evaluation builds the same :class:`genctl.evaluation.ImageSource` a genctl run's evaluation
builds (the real images of a folder or of a recipe's ``data:``, the same fixed real subset, the
same generation from one seed) and records the numbers in an MLflow run of its own, tagged
``genctl.pretrained``, beside the runs genctl trained.

diffusers is an optional dependency (``pip install "genctl[hf]"``), imported here only. A local
folder never touches the network (``HF_HUB_OFFLINE`` is set for it); a Hub id is fetched only when
``HF_HUB_OFFLINE`` is not set, and otherwise must already be in the local Hugging Face cache.
"""

from __future__ import annotations

import inspect
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from genctl.errors import BadInput

EXTRA = "hf"  # pip install "genctl[hf]"
PRETRAINED_TAG = "genctl.pretrained"  # the folder or Hub id a run evaluated
PLUGIN_NAME = "pretrained"  # what `genctl runs list` shows in the PLUGIN column
EXPERIMENT = "pretrained"  # the default experiment of evaluations of pretrained pipelines
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # owner/name
OFFLINE_ENV = "HF_HUB_OFFLINE"


class PretrainedOptions(BaseModel):
    """Sampler options of a pretrained pipeline: ``None`` leaves the pipeline's own default."""

    model_config = ConfigDict(extra="forbid")

    steps: int | None = Field(None, gt=0)  # num_inference_steps
    guidance: float | None = Field(None, ge=0)  # guidance_scale (text-to-image)
    prompt: str | None = None  # text-to-image; none: the empty prompt
    negative_prompt: str | None = None  # text-to-image, with guidance > 1
    strength: float = Field(0.8, gt=0, le=1)  # img2img: how far each input is noised
    eta: float | None = Field(None, ge=0)  # DDIM: 0 deterministic, 1 as DDPM


# the pipeline's argument of each option (strength and the prompts keep their names)
ARGUMENTS = {"steps": "num_inference_steps", "guidance": "guidance_scale"}
TEXT_OPTIONS = ("prompt", "negative_prompt", "guidance")


def _diffusers():
    """The diffusers module, or bad input naming the extra that installs it."""
    try:
        import diffusers
        import transformers  # Stable Diffusion's text encoder and tokenizer
    except ImportError as exc:
        raise BadInput(
            f"--pretrained needs Hugging Face diffusers and transformers ({exc.name} is not "
            "installed)",
            f'Install them with: pip install "genctl[{EXTRA}]"',
        ) from None
    import logging

    for name in ("diffusers", "transformers"):  # their warnings about configs are not ours
        logging.getLogger(name).setLevel(logging.ERROR)
    # nor their bars for loading components and weights: genctl shows its own progress
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    return diffusers


def _offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().upper() in ("1", "ON", "YES", "TRUE")


# ---------------------------------------------------------------- loading


@dataclass
class Pretrained:
    """A loaded pipeline and what genctl needs to know about it."""

    pipe: Any  # the diffusers pipeline
    source: str  # the folder (absolute) or Hub id it came from
    name: str  # its class name: DDPMPipeline, StableDiffusionPipeline, ...
    kind: str  # unconditional | text_to_image
    image_size: int  # the side of the images it makes
    sampler: PipelineSampler


def load(source: str, device: torch.device | str = "cpu") -> Pretrained:
    """The pipeline at ``source``: a folder saved with ``save_pretrained``, or a Hub id."""
    path = Path(source).expanduser()
    local = path.is_dir()
    if local:
        if not (path / "model_index.json").is_file():
            raise BadInput(
                f"--pretrained {source}: the folder holds no diffusers pipeline (no "
                "model_index.json)",
                "Give a folder written by pipeline.save_pretrained(DIR).",
            )
        os.environ.setdefault(OFFLINE_ENV, "1")  # a local folder needs no Hub: never ask it
        source = str(path.resolve())
    elif path.exists():
        raise BadInput(
            f"--pretrained {source} is a file, not a pipeline folder",
            "Give the folder written by pipeline.save_pretrained(DIR).",
        )
    elif not HUB_ID.fullmatch(source):
        raise BadInput(
            f"--pretrained {source}: no such folder",
            "Give a folder written by pipeline.save_pretrained(DIR), or a Hugging Face Hub id "
            "such as google/ddpm-cifar10-32.",
        )
    diffusers = _diffusers()
    offline = _offline()
    try:
        pipe = diffusers.DiffusionPipeline.from_pretrained(source, local_files_only=offline)
    except Exception as exc:  # a missing, partial or unreachable pipeline
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        if local:
            raise BadInput(
                f"--pretrained {source}: diffusers cannot load this pipeline: {reason}",
                "Give a folder written by pipeline.save_pretrained(DIR), with every component.",
            ) from None
        why = (
            f"{OFFLINE_ENV} is set and it is not in the local Hugging Face cache"
            if offline
            else f"it could not be fetched from the Hub ({reason})"
        )
        raise BadInput(
            f"--pretrained {source} is a Hub id, and {why}",
            "Pass a local folder: where the Hub is reachable, save the pipeline with "
            f"DiffusionPipeline.from_pretrained({source!r}).save_pretrained(DIR) (or `hf download "
            f"{source} --local-dir DIR`), then give --pretrained DIR.",
        ) from None
    kind = pipeline_kind(pipe)
    pipe.set_progress_bar_config(disable=True)  # genctl shows its own progress
    pipe = pipe.to(torch.device(device))
    sampler = PipelineSampler(pipe, kind)
    return Pretrained(pipe, source, type(pipe).__name__, kind, _image_size(pipe), sampler)


def pipeline_kind(pipe: Any) -> str:
    """``text_to_image`` for a pipeline that takes a ``prompt``, ``unconditional`` for one that
    takes a ``batch_size``; any other (class-conditional DiT, inpainting, ...) is bad input."""
    params = inspect.signature(pipe.__call__).parameters
    if "output_type" in params and "generator" in params and "mask_image" not in params:
        if "prompt" in params:
            return "text_to_image"
        if "batch_size" in params and "class_labels" not in params:
            return "unconditional"
    raise BadInput(
        f"--pretrained: {type(pipe).__name__} is neither an unconditional pipeline (batch_size=) "
        "nor a text-to-image one (prompt=), the kinds genctl samples",
        "Sample it with diffusers itself, or give an unconditional DDPM/DDIM or a Stable "
        "Diffusion pipeline.",
    )


def _image_size(pipe: Any) -> int:
    """The side of the images ``pipe`` makes by default (its UNet's side, times the VAE's factor
    for a latent pipeline)."""
    size = getattr(getattr(pipe, "unet", None), "config", None)
    size = getattr(size, "sample_size", None) or 64
    size = size[0] if isinstance(size, list | tuple) else size
    if getattr(pipe, "vae", None) is not None:
        size *= getattr(pipe, "vae_scale_factor", 8)
    return int(size)


# ---------------------------------------------------------------- the sampler


class PipelineSampler:
    """A diffusers pipeline as a genctl sampler (see the module docstring)."""

    generator_per_image = True  # a list of generators: image i from generator i

    def __init__(self, pipe: Any, kind: str):
        self.pipe, self.kind = pipe, kind
        self._img2img = None

    def check(self, options: PretrainedOptions, img2img: bool = False) -> None:
        """Bad input for an option this pipeline does not take."""
        name = type(self.pipe).__name__
        given = options.model_dump(exclude_defaults=True)
        if self.kind != "text_to_image":
            text = [k for k in TEXT_OPTIONS if k in given]
            if text:
                raise BadInput(
                    f"{name} is unconditional: it takes no {', '.join(text)}",
                    "Its options: steps" + (", eta" if self._takes("eta") else "") + ".",
                )
            if img2img:
                raise BadInput(
                    f"{name} has no image-to-image mode: --input needs a text-to-image pipeline "
                    "(Stable Diffusion)",
                    "Sample it without --input.",
                )
        if "eta" in given and not self._takes("eta", img2img):
            raise BadInput(f"{name} takes no eta (DDIM pipelines do)")
        if "strength" in given and not img2img:
            raise BadInput("strength is for img2img: give the input images with --input")

    def _takes(self, argument: str, img2img: bool = False) -> bool:
        pipe = self._image_to_image() if img2img else self.pipe
        return argument in inspect.signature(pipe.__call__).parameters

    def _image_to_image(self) -> Any:
        """The img2img pipeline sharing this pipeline's components."""
        if self._img2img is None:
            from diffusers import AutoPipelineForImage2Image

            try:
                self._img2img = AutoPipelineForImage2Image.from_pipe(self.pipe)
            except ValueError as exc:
                raise BadInput(
                    f"{type(self.pipe).__name__} has no image-to-image pipeline in diffusers: "
                    f"{str(exc).splitlines()[0][:200]}",
                    "Sample it without --input.",
                ) from None
            self._img2img.set_progress_bar_config(disable=True)
        return self._img2img

    def sample(
        self,
        n: int,
        options: PretrainedOptions,
        generator: torch.Generator | list[torch.Generator],
        inputs: Tensor | None = None,
    ) -> Tensor:
        """``n`` images, float [0, 1], N x C x H x W on the CPU. ``inputs`` (float [-1, 1]) make it
        image-to-image, each input noised to ``options.strength`` and denoised."""
        if isinstance(generator, list | tuple) and len(generator) != n:
            raise ValueError(f"{len(generator)} generators for {n} images")
        kwargs: dict[str, Any] = {"generator": generator, "output_type": "np"}
        for option, value in options.model_dump(exclude_none=True).items():
            if option != "strength":
                kwargs[ARGUMENTS.get(option, option)] = value
        pipe = self.pipe
        if self.kind == "text_to_image":
            # one prompt per image: generator i draws image i (and img2img pairs it with input i)
            kwargs["prompt"] = [options.prompt or ""] * n
            if options.negative_prompt is not None:
                kwargs["negative_prompt"] = [options.negative_prompt] * n
        else:
            kwargs["batch_size"] = n
        if inputs is not None:
            pipe = self._image_to_image()
            kwargs["image"] = inputs.float().add(1).div(2).clamp(0, 1).cpu()  # diffusers: [0, 1]
            kwargs["strength"] = options.strength
        try:
            images = pipe(**kwargs).images
        except ValueError as exc:  # diffusers checks its arguments with ValueError
            raise BadInput(
                f"{type(pipe).__name__}: {str(exc).strip().splitlines()[0][:300]}"
            ) from None
        return torch.from_numpy(images).permute(0, 3, 1, 2).float().clamp(0, 1)


def parse_options(sampler: PipelineSampler, pairs: list[str], img2img: bool = False):
    """``key=value`` options, validated and checked against the pipeline."""
    from genctl.sampling import parse_options as parse

    options = parse(_OptionsSpec(), pairs)
    sampler.check(options, img2img)
    return options


class _OptionsSpec:
    """What :func:`genctl.sampling.parse_options` reads of a spec."""

    name = "pretrained pipeline"
    sampler_options = PretrainedOptions


# ---------------------------------------------------------------- genctl sample --pretrained


def sample(
    source: str,
    options: list[str],
    *,
    n: int,
    seed: int,
    seeds: list[int] | None,
    out: Path,
    inputs: str | None,
    device: torch.device,
    batch_size: int | None,
) -> tuple[int, Path, str]:
    """Write the pipeline's images as ``genctl sample`` writes a model's: image ``j`` drawn from
    its own generator (``image_seed(seed, j)``, or seed ``seeds[j]``; with ``inputs``, input
    ``j``'s), written batch by batch. Returns (images written, where, the pipeline's name)."""
    from genctl.sampling import (
        IMAGE_SUFFIXES,
        Progress,
        check_grid,
        default_batch_size,
        read_inputs,
        save_images,
    )
    from genctl.spec import DataInfo, image_seed

    model = load(source, device)
    opts = parse_options(model.sampler, options, img2img=inputs is not None)
    images_in = None
    if inputs is not None:
        info = DataInfo(task="paired", channels=3, image_size=model.image_size)
        images_in, names = read_inputs(inputs, info, device)
        seed_of = [image_seed(seed, j) for j in range(len(images_in))]
    elif seeds is not None:
        seed_of, names = seeds, [f"seed{s:04d}" for s in seeds]
    else:
        width = max(5, len(str(n - 1)))
        seed_of, names = (
            [image_seed(seed, j) for j in range(n)],
            [f"{j:0{width}d}" for j in range(n)],
        )
    total = len(seed_of)
    batch = batch_size or default_batch_size(model.image_size)
    grid = out.suffix.lower() in IMAGE_SUFFIXES
    check_grid(out, total, model.image_size)
    kept, written = [], []
    with Progress(total, f"sampling {model.name}") as progress, torch.no_grad():
        for start in range(0, total, batch):
            stop = min(start + batch, total)
            gens = [torch.Generator().manual_seed(s) for s in seed_of[start:stop]]
            x = images_in[start:stop] if images_in is not None else None
            images = model.sampler.sample(stop - start, opts, gens, inputs=x)
            if grid:
                kept.append(images)
            else:
                written += save_images(images, out, names=names[start:stop])
            progress.update(stop - start)
    if grid:
        written = save_images(torch.cat(kept), out)
    return total, written[0] if len(written) == 1 else out, model.name


# ---------------------------------------------------------------- genctl evaluate --pretrained

IMAGE_KINDS = ("images", "shapes", "mnist", "cifar10")  # data kinds with plain images to compare
GRID = 64  # generated images logged as the run's sample grid


@dataclass
class RealImages:
    """What ``--real`` gave: the data, and a recipe's evaluate/tracking sections (else defaults)."""

    data: Any  # DataConfig
    evaluate: Any  # EvaluateConfig
    seed: int  # the recipe's train.seed: its runs' evaluations generate from it
    uri: str | None  # the recipe's tracking.uri
    recipe: str | None  # the recipe's path; None: a folder, read at the pipeline's image size


def real_images(real: str) -> RealImages:
    """``--real``: a recipe file (its ``data:``, ``evaluate:``, ``train.seed``, ``tracking.uri``:
    the protocol of that recipe's runs) or a folder of images."""
    from genctl.data import DataConfig
    from genctl.recipe import EvaluateConfig, RecipeBase, format_validation_error, load_yaml

    path = Path(real).expanduser()
    if path.is_dir():
        data = DataConfig(kind="images", root=str(path.resolve()), labels=False)
        return RealImages(data, EvaluateConfig(), 0, None, None)
    if path.is_file() and path.suffix.lower() in (".yaml", ".yml"):
        from pydantic import ValidationError

        raw = load_yaml(path)
        try:
            base = RecipeBase.model_validate(raw)
        except ValidationError as exc:
            raise BadInput(f"{real}: {format_validation_error(exc, RecipeBase)}") from None
        if base.data.kind not in IMAGE_KINDS:
            raise BadInput(
                f"--real {real}: its data is of kind {base.data.kind}, not images to compare "
                "generated images with",
                f"Give a recipe whose data.kind is one of {', '.join(IMAGE_KINDS)}, or a folder.",
            )
        return RealImages(base.data, base.evaluate, base.train.seed, base.tracking.uri, str(path))
    raise BadInput(
        f"--real {real}: neither a folder of images nor a recipe (.yaml)",
        "Give the real images as a folder, or a recipe whose data: section names them.",
    )


def evaluate(
    source: str,
    options: list[str],
    *,
    real: str,
    metrics: list[str] | None,
    num_samples: int | None,
    batch_size: int | None,
    device: torch.device,
    seed: int | None,
    weights: str | None,
    feature_extractor: str | None,
    progress: bool,
):
    """Score the pipeline at ``source`` as a genctl run of the ``--real`` data is scored, and
    record it in an MLflow run of its own. Returns (the Evaluation, the run id, the pipeline)."""
    from genctl.data import load_dataset
    from genctl.evaluation import DOMAIN_METRICS, INCEPTION_METRICS, evaluate, record
    from genctl.evaluation.sources import ImageSource, real_subset, sampled, sampler_protocol
    from genctl.interrupts import deferred
    from genctl.sampling import default_batch_size

    given = real_images(real)  # before the pipeline loads: a wrong path fails at once
    model = load(source, device)
    opts = parse_options(model.sampler, options)
    if given.recipe is None:
        given.data = given.data.model_copy(update={"image_size": model.image_size})
    cfg = given.evaluate
    n = num_samples or cfg.num_samples
    seed = given.seed if seed is None else seed
    # as `genctl evaluate --run`: num_real applies unless --num-samples is given
    num_real = cfg.num_real if num_samples is None else None
    dataset = load_dataset(given.data)
    real_set, real_name = real_subset(dataset.tensors["image"], num_real or n, given.data)

    shown: list[Tensor] = []  # the first generated images: the run's sample grid
    draw = sampled(model.sampler, opts, n, seed)  # one generator for the whole draw, as a run's

    def generate(size: int):
        for images in draw(size):
            if sum(map(len, shown)) < GRID:
                shown.append(images[: GRID - sum(map(len, shown))].float().cpu())
            yield images

    image_source = ImageSource(
        generate, n, real_set, real_name, protocol=sampler_protocol(model.sampler, opts)
    )
    # a recipe's held-out metrics (nll, accuracy, auroc) score a model's own test likelihoods or
    # classes, which a pipeline has not
    default = [m for m in cfg.metrics if m in INCEPTION_METRICS + DOMAIN_METRICS] or ["fid", "kid"]
    result = evaluate(
        image_source,
        metrics or default,
        weights=weights or cfg.feature_extractor_weights,
        device=device,
        # the recipe's batch, but no more than `genctl sample` draws at once at this size (4 at
        # 512 px): a 64-image batch of a Stable Diffusion is tens of GB
        batch_size=batch_size or min(cfg.batch_size, default_batch_size(model.image_size)),
        progress=progress,
        feature_extractor=feature_extractor or cfg.feature_extractor,
    )
    if given.data.image_size != model.image_size:
        from genctl.evaluation.fidelity import INPUT_SIZE

        result.notes.append(
            f"{model.name} makes {model.image_size} px images and the real ones are "
            f"{given.data.image_size} px; Inception resizes both to {INPUT_SIZE} px"
        )
    with deferred():  # the run is recorded whole or not at all
        run_id = _record(model, opts, given, dataset, n, seed, result, shown, record)
    return result, run_id, model


def _record(model, opts, given, dataset, n, seed, result, shown, record) -> str:
    """A run of its own: params, tags (``genctl.pretrained``), the real data as its evaluation
    dataset, the evaluation, a sample grid."""
    import diffusers

    import genctl
    from genctl.recipe import flatten
    from genctl.sampling import grid_image
    from genctl.tracking import PLUGIN_TAG, Tracker

    name = Path(model.source).name if Path(model.source).is_dir() else model.source
    tracker = Tracker(experiment=EXPERIMENT, run_name=name, uri=given.uri)
    status = "FAILED"
    try:
        tracker.log_params(
            {
                "pretrained.source": model.source,
                "pretrained.pipeline": model.name,
                **{f"sampler.{k}": v for k, v in opts.model_dump(exclude_none=True).items()},
                **flatten({"data": given.data.model_dump(mode="json")}),
                "evaluate.num_samples": n,
                "evaluate.seed": seed,
            }
        )
        tracker.set_tags(
            {
                PLUGIN_TAG: PLUGIN_NAME,
                PRETRAINED_TAG: model.source,
                "genctl.pretrained_pipeline": model.name,
                "genctl.task": model.kind,
                "genctl.version": genctl.__version__,
                "genctl.diffusers": diffusers.__version__,
                "genctl.recipe": given.recipe or "",
            }
        )
        tracker.log_data(given.data, dataset, context="evaluation")
        record(tracker, result, 0, on_demand=True)
        if shown:
            images = torch.cat(shown)
            tracker.log_image(grid_image(images, math.ceil(math.sqrt(len(images)))), "samples", 0)
        status = "FINISHED"
    finally:
        tracker.finish(status)
    return tracker.run_id
