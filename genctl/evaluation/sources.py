"""Sources of generated images: what a model makes, and the real images it is judged against.

:class:`ImageSource` is the whole contract between a model family and the evaluation. The core
builds one from the recipe's task, so no family needs special code:

* ``unconditional`` / ``conditional``: ``sampler.sample`` with the recipe's ``evaluate.sampler``
  options, against the training images (a fixed random subset). A class-conditional sampler is
  given its labels (:func:`genctl.spec.class_labels`): class ``i % num_classes`` for image ``i``
  of the whole evaluation, or the ``class`` option's class;
* ``paired`` / ``unpaired`` (translation): the test split's inputs translated, against the
  target domain's test images; paired outputs are also compared one by one (PSNR, SSIM);
* ``super_resolution``: the test split's HR images downscaled as in training and upscaled by the
  model, compared one by one with the HR originals, beside a bicubic upscaling as the baseline.

A family that wants something else builds its own :class:`ImageSource` and calls
:func:`genctl.evaluation.evaluate` with it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from genctl.data import to_unit
from genctl.errors import BadInput
from genctl.spec import chosen_class, draw, sampler_classes

Batches = Callable[[int], Iterable[Tensor]]  # batch_size -> batches of images, in order

REAL_SUBSET_SEED = 0  # every run compares against the same real subset, so the cache is shared


@dataclass
class ImageSource:
    """Generated images, and the real images they are judged against."""

    generate: Batches  # batches of generated images: float in [0, 1] or uint8, N x C x H x W
    count: int  # how many generated images to take
    # uint8 N x C x H x W on the CPU, or StreamedImages read by slices (None: only IS, which
    # needs no real set)
    real: Tensor | StreamedImages | None
    real_name: str = "real images"  # said in messages and recorded with the numbers
    paired: bool = False  # generated image i predicts real image i: PSNR and SSIM apply
    baselines: dict[str, Batches] = field(default_factory=dict)  # paired, e.g. {"bicubic": ...}
    notes: list[str] = field(default_factory=list)  # said to the user with the results
    # how the images were made (eval.sampler, eval.labels): recorded with the numbers
    protocol: dict[str, str] = field(default_factory=dict)
    # paired: PSNR/SSIM on the Y channel (RGB beside), after cropping `border` px (super-resolution)
    y_channel: bool = False
    border: int = 0
    # held-out images for the model's own likelihood (`nll`), see genctl.evaluation.likelihood
    likelihood: Any = None
    # held-out labelled images for a classifier's `accuracy`, see genctl.evaluation.classification
    classifier: Any = None
    # labelled test images for the model's anomaly scores (`auroc`), see genctl.evaluation.anomaly
    anomaly: Any = None
    # (data config, dataset) the real images come from: the run's evaluation dataset inputs
    datasets: list[tuple[Any, Any]] = field(default_factory=list)


def to_uint8(images: Tensor) -> Tensor:
    """[0, 1] floats -> uint8, rounded as genctl writes images (uint8 passes through)."""
    if images.dtype == torch.uint8:
        return images
    return images.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)


def from_uint8(images: Tensor, device: torch.device | str) -> Tensor:
    """uint8 [0, 255] -> float [-1, 1] on ``device``: what samplers take as ``inputs``."""
    return to_unit(images.to(device))


# ---------------------------------------------------------------- generated batches


def sampled(sampler: Any, options: Any, n: int, seed: int) -> Batches:
    """Batches of ``sampler.sample(k, options, generator)``: images 0 .. n-1 of one draw.

    A class-conditional sampler gets the labels of each batch's images within the whole draw
    (:func:`genctl.spec.draw`), so the classes are balanced whatever the batch size.
    """

    def batches(batch_size: int) -> Iterator[Tensor]:
        generator = torch.Generator().manual_seed(seed)
        for start in range(0, n, batch_size):
            yield draw(sampler, min(batch_size, n - start), options, generator, first=start)

    return batches


def sampler_protocol(sampler: Any, options: Any) -> dict[str, str]:
    """What the sampler was asked for, as protocol entries: ``eval.sampler``, the options that
    differ from the defaults as JSON (``{}``: all defaults), and ``eval.labels``, the classes
    drawn (``balanced``, ``class N``, or ``none`` for a sampler without labels)."""
    changed = {}
    if options is not None:
        changed = options.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    labels = "none"
    if sampler_classes(sampler):
        chosen = chosen_class(options)
        labels = "balanced" if chosen is None else f"class {chosen}"
    return {"eval.sampler": json.dumps(changed, sort_keys=True), "eval.labels": labels}


def evaluation_options(recipe: Any, pairs: Iterable[str] = ()) -> Any:
    """The sampler options evaluation draws with: the recipe's ``evaluate.sampler``, then
    ``key=value`` ``pairs`` from the command line (``genctl evaluate ... guidance=3.0``)."""
    from genctl.sampling import parse_options

    given = [f"{k}={json.dumps(v)}" for k, v in recipe.evaluate.sampler.items()]
    return parse_options(recipe.spec, [*given, *pairs])


def translated(
    sampler: Any, options: Any, inputs: Tensor, seed: int, device: torch.device | str
) -> Batches:
    """Batches of ``sampler.sample(k, options, generator, inputs=...)`` over uint8 ``inputs``."""

    def batches(batch_size: int) -> Iterator[Tensor]:
        generator = torch.Generator().manual_seed(seed)
        for start in range(0, len(inputs), batch_size):
            x = from_uint8(inputs[start : start + batch_size], device)
            yield sampler.sample(len(x), options, generator, inputs=x)

    return batches


def downscale(hr: Tensor, scale: int) -> Tensor:
    """float [-1, 1] HR -> LR, as the training loader makes it (bicubic with antialiasing)."""
    side = hr.shape[-1] // scale
    lr = F.interpolate(hr, size=(side, side), mode="bicubic", antialias=True, align_corners=False)
    return lr.clamp(-1.0, 1.0)


def super_resolved(
    sampler: Any, options: Any, hr: Tensor, scale: int, seed: int, device
) -> Batches:
    """Batches of the model's upscaling of the LR versions of uint8 ``hr``."""

    def batches(batch_size: int) -> Iterator[Tensor]:
        generator = torch.Generator().manual_seed(seed)
        for start in range(0, len(hr), batch_size):
            lr = downscale(from_uint8(hr[start : start + batch_size], device), scale)
            yield sampler.sample(len(lr), options, generator, inputs=lr)

    return batches


def bicubic(hr: Tensor, scale: int) -> Batches:
    """The baseline: bicubic upscaling of the same LR images."""

    def batches(batch_size: int) -> Iterator[Tensor]:
        for start in range(0, len(hr), batch_size):
            x = hr[start : start + batch_size]
            lr = downscale(from_uint8(x, "cpu"), scale)
            up = F.interpolate(lr, size=x.shape[-2:], mode="bicubic", align_corners=False)
            yield up.add(1).div(2)

    return batches


# ---------------------------------------------------------------- the default source of a recipe


def source_for(
    recipe: Any,
    sampler: Any,
    *,
    device: torch.device | str,
    num_samples: int,
    seed: int,
    options: Any = None,
    num_real: int | None = None,
    nll_images: int | None = None,
) -> ImageSource:
    """The :class:`ImageSource` of a recipe's model: see the module docstring.

    ``options``: the sampler options to draw with (default: the recipe's ``evaluate.sampler``).
    ``nll_images``: test images the likelihood scores (default: ``evaluate.nll_images``, else all).
    """
    spec = recipe.spec
    options = options if options is not None else evaluation_options(recipe)
    if getattr(sampler, "nrow", None) is not None and sampler.nrow(options) is not None:
        raise BadInput(
            "these sampler options make a figure (a grid of its own), not samples to evaluate",
            "Evaluate with the sampler's plain sampling mode (see evaluate.sampler).",
        )
    task, protocol = spec.task, sampler_protocol(sampler, options)
    if task in ("unconditional", "conditional"):
        from genctl.data import StreamDataset, open_dataset

        data = open_dataset(recipe.data)  # streamed from the files when training would stream
        n_real = num_real or num_samples
        if isinstance(data, StreamDataset):
            real, name = streamed_subset(data, n_real, recipe.data)
        else:
            real, name = real_subset(data.tensors["image"], n_real, recipe.data)
        generate = sampled(sampler, options, num_samples, seed)
        from genctl.evaluation.likelihood import held_out

        heldout = held_out(recipe, sampler, nll_images or recipe.evaluate.nll_images, seed)
        from genctl.evaluation import anomaly, classification

        return ImageSource(
            generate,
            num_samples,
            real,
            name,
            protocol=protocol,
            likelihood=heldout,
            classifier=classification.held_out(recipe, sampler),
            anomaly=anomaly.held_out(recipe, sampler, seed),
            datasets=[(recipe.data, data)],
        )

    data, notes = _test_split(recipe.data)
    t = data.tensors
    split = "test" if not notes else recipe.data.split
    used = [(recipe.data.model_copy(update={"split": split}), data)]
    if task == "paired":
        n = min(num_samples, len(t["input"]))
        inputs, targets = t["input"][:n], t["target"][:n]
        name = f"{_where(recipe.data)} {split} targets ({n})"
        generate = translated(sampler, options, inputs, seed, device)
        return ImageSource(
            generate, n, targets, name, True, notes=notes, protocol=protocol, datasets=used
        )
    if task == "unpaired":
        n = min(num_samples, len(t["a"]))
        real = t["b"][: min(num_samples, len(t["b"]))]
        name = f"{_where(recipe.data)} {split} target domain ({len(real)})"
        generate = translated(sampler, options, t["a"][:n], seed, device)
        return ImageSource(generate, n, real, name, notes=notes, protocol=protocol, datasets=used)
    if task == "super_resolution":
        n = min(num_samples, len(t["hr"]))
        hr, scale = t["hr"][:n], recipe.data.scale
        name = f"{_where(recipe.data)} {split} HR images ({n})"
        generate = super_resolved(sampler, options, hr, scale, seed, device)
        baselines = {"bicubic": bicubic(hr, scale)}
        # as SR papers report: the Y channel, `scale` px cropped from each border
        return ImageSource(
            generate,
            n,
            hr,
            name,
            True,
            baselines,
            notes,
            protocol,
            y_channel=True,
            border=scale,
            datasets=used,
        )
    raise BadInput(f"cannot evaluate models of task {task!r}")


def real_subset(images: Tensor, n: int, data_cfg: Any = None) -> tuple[Tensor, str]:
    """At most ``n`` real images: all of them, or a fixed random subset (the same for every run)."""
    chosen = subset_indices(len(images), n)
    real = images if chosen is None else images[chosen]
    return real, _subset_name(data_cfg, len(real), len(images))


def streamed_subset(data: Any, n: int, data_cfg: Any = None) -> tuple[StreamedImages, str]:
    """:func:`real_subset` of a streamed set: the same images in the same order, left on disk
    and decoded a batch at a time when read (:class:`StreamedImages`)."""
    chosen = subset_indices(len(data), n)
    indices = torch.arange(len(data)) if chosen is None else chosen
    return StreamedImages(data, indices), _subset_name(data_cfg, len(indices), len(data))


def subset_indices(total: int, n: int) -> Tensor | None:
    """The indices, ascending, of the fixed random subset of ``n`` of ``total`` images (None:
    all of them)."""
    if n >= total:
        return None
    order = torch.randperm(total, generator=torch.Generator().manual_seed(REAL_SUBSET_SEED))
    return order[:n].sort().values


def _subset_name(data_cfg: Any, n: int, total: int) -> str:
    where = f"{_where(data_cfg)} {data_cfg.split}" if data_cfg is not None else "real images"
    return f"{where} ({n})" if n >= total else f"{where} ({n} of {total}, fixed subset)"


class StreamedImages:
    """Real images of a streamed dataset (:class:`genctl.data.StreamDataset`, one image key)
    that stay on disk: ``images[a:b]`` decodes those images only, as uint8 N x C x H x W, so
    whoever reads them a batch at a time holds one batch, whatever their number. It reads like
    the uint8 tensor of the in-memory path where evaluation reads real images: ``len``,
    ``shape``, ``dtype`` and slices (:func:`genctl.evaluation.content_fingerprint` hashes it
    batch by batch to the tensor's fingerprint)."""

    dtype = torch.uint8

    def __init__(self, dataset: Any, indices: Tensor):
        if len(dataset.parts) != 1:
            raise ValueError("StreamedImages reads a dataset of one stream")
        self.dataset, self.indices = dataset, indices
        info = dataset.info
        self.shape = torch.Size((len(indices), info.channels, info.image_size, info.image_size))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: slice) -> Tensor:
        if not isinstance(item, slice):
            raise TypeError("streamed real images are read by slices, a batch at a time")
        return self.dataset.take([self.indices[item]])[self.dataset.parts[0].keys[0]]


def _test_split(cfg: Any) -> tuple[Any, list[str]]:
    """The test split of the data (the training split, said so, when there is none)."""
    from genctl.data import load_dataset

    try:
        return load_dataset(cfg.model_copy(update={"split": "test"})), []
    except BadInput as exc:
        data = load_dataset(cfg)
        return data, [f"no test split ({exc.message}); evaluated on the {cfg.split} split"]


def _where(cfg: Any) -> str:
    root = getattr(cfg, "root", None)
    return f"{cfg.kind}:{root}" if root else str(cfg.kind)
