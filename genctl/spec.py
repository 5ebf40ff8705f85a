"""The plugin contract: what a model family gives genctl, and what genctl gives it.

A family registers one :class:`ModelSpec` per model it offers. The spec names three builders —
the architecture, the objective (the loss) and the sampler — and the pydantic schemas of the
recipe's ``model:`` section and of the sampler's ``key=value`` options. The trainer, the tracker,
the checkpoint format and the CLI are the core's and the same for every family.

Tensors crossing the contract:

* batches are dicts of float tensors in [-1, 1], N x C x H x W, already on the training device,
  keyed by the data task (see :data:`BATCH_KEYS`); ``label`` is an int64 tensor of class indices;
* samplers return float tensors in [0, 1], N x C x H x W.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:  # torch is imported where it is used, so `genctl --help` stays fast
    import torch
    from torch import Tensor, nn

Task = Literal["unconditional", "conditional", "paired", "unpaired", "super_resolution"]
"""What data a model consumes.

``unconditional``: images, labels optional (a model may still condition on them when present).
``conditional``: images with class labels (required).
``paired``: aligned input/target images (pix2pix).  ``unpaired``: two domains (CycleGAN).
``super_resolution``: high-resolution images with low-resolution versions made from them.
"""

BATCH_KEYS: dict[str, tuple[str, ...]] = {
    "unconditional": ("image",),  # plus "label" when the dataset has classes
    "conditional": ("image", "label"),
    "paired": ("input", "target"),
    "unpaired": ("a", "b"),
    "super_resolution": ("lr", "hr"),
}


class Schema(BaseModel):
    """Base for the pydantic schemas a plugin supplies: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class NoOptions(Schema):
    """Sampler options schema for samplers that take none."""


@dataclass(frozen=True)
class DataInfo:
    """What the architecture needs to know about the data."""

    task: str
    channels: int
    image_size: int  # the side of the (square) training images; for super_resolution, of HR
    num_classes: int = 0  # 0 when the data has no labels
    class_names: tuple[str, ...] = ()
    size: int = 0  # number of training items
    scale: int = 1  # super_resolution: HR side / LR side


class Objective(Protocol):
    """The loss of a family, and the order in which its optimizer groups update.

    Attributes and methods the trainer uses:

    ``groups``: optimizer group name -> names of the networks that group updates, e.g.
    ``{"d": ["discriminator"], "g": ["generator"]}``. One optimizer is made per group.

    ``schedule(step)``: the groups to update at this training step, in order, e.g.
    ``["d"] * 5 + ["g"]`` for WGAN. Each entry is one optimizer step on a fresh batch.

    ``loss(group, batch, step)``: a scalar tensor to minimise for that group, and a dict of
    detached scalar tensors to log (names without prefix, e.g. ``{"d_real": ...}``). Never call
    ``.item()`` here: the trainer reads logged values only at log intervals.

    ``state_dict()`` / ``load_state_dict()``: everything the objective keeps between steps
    (an image pool, a growth phase) as tensors and plain Python values, so resume is exact.

    Optional: ``after_update(group, step)`` runs after the optimizer step of ``group``
    (weight clipping for WGAN, say).

    Optional: ``grad_scaler``. An objective that declares this attribute (``grad_scaler = None``)
    is given the trainer's ``torch.amp.GradScaler`` before training; it is enabled under
    ``precision: fp16``. Gradient penalties take their input gradients through
    :func:`penalty_gradients` with it, as PyTorch's AMP examples prescribe.

    Optional: ``optimizer_settings(group, settings) -> settings`` adjusts the optimizer made for
    ``group``: ``settings`` is the resolved ``train.optimizer`` (``train.optimizers.<group>``
    applied) as a dict (``name``, ``lr``, ``betas``, ``eps``, ``weight_decay``, ``momentum``);
    the optimizer is built from the dict returned (StyleGAN2's lazy-regularization ratio).
    """

    groups: Mapping[str, Sequence[str]]

    def schedule(self, step: int) -> Sequence[str]: ...

    def loss(
        self, group: str, batch: dict[str, Tensor], step: int
    ) -> tuple[Tensor, dict[str, Tensor]]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@runtime_checkable
class Sampler(Protocol):
    """Turns trained networks into images.

    ``sample(n, options, generator, inputs=None, labels=None)``: ``n`` images in [0, 1],
    N x C x H x W. ``options`` is an instance of the spec's ``sampler_options`` schema. All
    randomness comes from ``generator`` (a CPU ``torch.Generator``), so the same seed gives the
    same images. ``inputs`` (float [-1, 1], on the networks' device) is given to samplers whose
    spec says ``takes_input=True`` (translation, super-resolution, img2img); then
    ``n == len(inputs)``.

    Class-conditional samplers say so with an attribute ``num_classes`` (> 0: the classes they
    draw; absent or 0: none) and take ``labels``: an int64 CPU tensor of ``n`` class indices,
    image ``i`` of class ``labels[i]``. The core always gives them (see :func:`class_labels`):
    evaluation, ``genctl sample`` and training grids draw class ``i % num_classes`` for image
    ``i`` of the whole draw (per seed for ``--seeds``), or every image of the class the user
    picked with the ``class`` option (a field ``class_`` with ``alias="class"``), so no family
    cycles classes itself. Given ``labels``, a sampler draws exactly those. Called without them
    (from Python), it draws what it documents: ``class_labels(self, options, range(n))`` (the
    ``class`` option's class, else balanced within the call), or the unconditional branch of a
    classifier-free-guided model, say. Samplers without ``num_classes`` are never given labels.

    Optional, the latent interface, for samplers that draw from a latent (``genctl steer``, see
    :mod:`genctl.steering`): ``latent(n, generator) -> z``, ``n`` latents of the prior (all
    randomness from the CPU ``generator``), and ``generate(z, labels=None) -> images`` in
    [0, 1], N x C x H x W, a deterministic function of ``z`` differentiable in it (networks in
    eval mode; no ``torch.no_grad``). A class-conditional sampler draws ``labels`` (default: as
    ``class_labels``). The contract kit's ``latent`` check holds them to this.

    Optional: ``preview(batch, generator) -> (images in [0, 1], nrow)`` draws the training-time
    grid from a fixed batch of data (input | output | target side by side, say). Without it the
    trainer shows ``sample()`` with default options and a fixed seed.

    Optional, for likelihood models: ``nll(images, labels, generator) -> Tensor``, the negative
    log-likelihood in nats (or an upper bound on it) of each of N uint8 test images (on the
    networks' device; ``labels`` their classes or None), and ``nll_protocol() -> dict[str, str]``
    saying how (``estimator``, ``data``, ``dequantization``). Evaluation's ``nll`` metric
    reports their mean as ``nll`` and ``bpd`` (see :mod:`genctl.evaluation.likelihood`).

    Optional, for anomaly detection: ``anomaly_scores(images, generator) -> dict[str, Tensor]``,
    per-image scores of N uint8 images (higher: more anomalous), one float tensor of N per kind
    (``mse``, ``nelbo``). ``genctl score`` writes them to a CSV; evaluation's ``auroc`` metric
    reports ``auroc_<kind>`` and ``auprc_<kind>`` on the test split with
    ``evaluate.anomaly_classes`` as the anomalies (see :mod:`genctl.evaluation.anomaly`).

    Evaluation (FID, KID, ...) calls ``sample()`` batch by batch with the recipe's
    ``evaluate.sampler`` options and, for a class-conditional sampler, balanced labels over the
    whole evaluation.
    """

    def sample(
        self,
        n: int,
        options: Any,
        generator: torch.Generator,
        inputs: Tensor | None = None,
        labels: Tensor | None = None,
    ) -> Tensor: ...


CLASS_OPTION = "class"
"""The sampler option that picks one class for every image (``class=7``): a field ``class_``
with ``alias="class"`` in the sampler options schema of a class-conditional model."""


def sampler_classes(sampler: Any) -> int:
    """How many classes ``sampler`` draws: its ``num_classes``, 0 when it takes no labels."""
    return int(getattr(sampler, "num_classes", 0) or 0)


def chosen_class(options: Any) -> int | None:
    """The class the ``class`` option picks, or None (not given, or no such option)."""
    value = getattr(options, "class_", None)
    return None if value is None else int(value)


def class_labels(sampler: Any, options: Any, indices: Iterable[int]) -> Tensor | None:
    """The labels the core gives a class-conditional sampler for the images ``indices`` of a draw.

    Every image of the ``class`` option's class when the options give one, else class
    ``i % num_classes`` for image ``i``: balanced over the whole draw when ``indices`` run over
    it (image indices of an evaluation, seeds of ``--seeds``), whatever the batches. None for a
    sampler that takes no labels. A class out of range is bad input.
    """
    import torch

    from genctl.errors import BadInput

    k = sampler_classes(sampler)
    if k <= 0:
        return None
    index = torch.as_tensor(list(indices), dtype=torch.long)
    chosen = chosen_class(options)
    if chosen is None:
        return index.remainder(k)
    if not 0 <= chosen < k:
        raise BadInput(
            f"{CLASS_OPTION}={chosen} is out of range", f"This model has classes 0 to {k - 1}."
        )
    return torch.full_like(index, chosen)


def labels_to_draw(
    sampler: Any, n: int, options: Any, labels: Tensor | None = None
) -> Tensor | None:
    """What a sampler's ``sample(n, options, generator, labels=labels)`` draws: ``labels`` when
    genctl gives them, else :func:`class_labels` of the call (the ``class`` option's class, or
    balanced); None for a sampler without classes, where a class or labels are bad input."""
    from genctl.errors import BadInput

    if not sampler_classes(sampler):
        chosen = chosen_class(options)
        if chosen is not None or labels is not None:
            what = f"{CLASS_OPTION}={chosen}" if chosen is not None else "labels"
            raise BadInput(
                f"{what} given, but this model is not class-conditional",
                f"Drop the {CLASS_OPTION} option; only a model trained to condition on the "
                "labels of its data draws classes.",
            )
        return None
    if labels is None:
        return class_labels(sampler, options, range(n))
    if labels.shape != (n,):
        raise ValueError(f"labels of shape {tuple(labels.shape)} for {n} images")
    return labels


def draw(
    sampler: Any, n: int, options: Any, generator: torch.Generator, *, first: int = 0
) -> Tensor:
    """``sampler.sample`` as the core calls it for images ``first .. first + n - 1`` of a draw:
    with their :func:`class_labels` when the sampler is class-conditional."""
    labels = class_labels(sampler, options, range(first, first + n))
    if labels is None:
        return sampler.sample(n, options, generator)
    return sampler.sample(n, options, generator, labels=labels)


def image_seed(seed: int, index: int) -> int:
    """The seed of image ``index`` of ``genctl sample --seed seed``: a hash of the pair, so each
    image has a generator of its own (the same images whatever the batch size) and draws of
    neighbouring seeds share no image."""
    import hashlib

    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # below 2**63, what manual_seed takes


def noise(kind: str, shape: Sequence[int], generator: Any, dtype: Any = None) -> Tensor:
    """``torch.randn`` (``kind="randn"``) or ``torch.rand`` (``"rand"``) of ``shape`` on the CPU,
    for samplers that say ``generator_per_image``: given a list of generators, row ``i`` is the
    first draw of generator ``i`` (what a call for that image alone would draw), so an image
    does not depend on the batch it is drawn in. Given one generator, one draw as usual."""
    import torch

    fn = torch.randn if kind == "randn" else torch.rand
    dtype = dtype or torch.float32
    if isinstance(generator, list | tuple):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
        return torch.cat([fn(1, *shape[1:], generator=g, dtype=dtype) for g in generator])
    return fn(*shape, generator=generator, dtype=dtype)


def draw_each(
    sampler: Any,
    options: Any,
    generators: Sequence[torch.Generator],
    indices: Sequence[int],
) -> Tensor:
    """One image per generator: image ``j`` is the first draw of ``generators[j]``, of the class
    :func:`class_labels` gives index ``indices[j]`` (its image index, or its seed for ``--seeds``).

    The same images however they are batched. A sampler whose ``generator_per_image`` is true
    takes the list in one call (``sample(n, options, [g_0, ..., g_n-1])``, as diffusers' pipelines
    take a list of generators) and must give what ``n`` calls of one image each would give; any
    other sampler is called once per image.
    """
    import torch

    labels = class_labels(sampler, options, indices)
    if getattr(sampler, "generator_per_image", False):
        gens = list(generators)
        if labels is None:
            return sampler.sample(len(gens), options, gens)
        return sampler.sample(len(gens), options, gens, labels=labels)
    return torch.cat(
        [draw(sampler, 1, options, g, first=i) for g, i in zip(generators, indices, strict=True)]
    )


def penalty_gradients(outputs: Tensor, inputs: Tensor, scaler: Any = None) -> Tensor:
    """The gradient of ``outputs.sum()`` with respect to ``inputs``, with a graph, for gradient
    penalties (WGAN-GP, R1). Returned in float32.

    Under ``precision: fp16`` the trainer scales the loss (its ``GradScaler``, the objective's
    ``grad_scaler``) so that small gradients do not underflow in half precision. A penalty's
    own ``autograd.grad`` needs the same care (PyTorch AMP examples, "Gradient penalty"): the
    outputs are scaled before the gradient is taken and the gradient unscaled after. The
    unscaling multiplies by the scale's inverse on the device, with no host sync. The scaled
    quantity is the outputs' mean, so each output's gradient is scale / N, as in a loss averaged
    over the batch (a sum would overflow float16 at the default scale of 2^16 with any batch).

    A scale too large for this step overflows the gradient. Then, as for an overflow in the
    main loss, the loss stays finite (the non-finite entries read as 0) and the update's
    parameter gradients are made non-finite, so the scaler skips the update and lowers its
    scale. Without a scaler, or with a disabled one, this is the plain gradient.
    """
    import torch

    if scaler is None or not scaler.is_enabled():
        (grad,) = torch.autograd.grad(outputs.sum(), inputs, create_graph=True)
        return grad.float()
    n = outputs.numel()
    scale = scaler.scale(torch.ones((), device=outputs.device))  # a device tensor
    scaled = scaler.scale(outputs.float().sum() / n)
    (grad,) = torch.autograd.grad(scaled, inputs, create_graph=True)
    grad = grad.float()
    overflow = ~torch.isfinite(grad).all()
    grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0) * (n / scale)
    return _skip_update_if().apply(grad, overflow)


@functools.cache
def _skip_update_if() -> Any:
    """The autograd Function behind penalty_gradients' overflow handling, made on first use."""
    import torch

    class SkipUpdateIf(torch.autograd.Function):
        """Identity forward; backward makes the gradient non-finite when ``overflow``."""

        @staticmethod
        def forward(ctx, x, overflow):
            ctx.save_for_backward(overflow)
            return x.view_as(x)

        @staticmethod
        def backward(ctx, grad):
            (overflow,) = ctx.saved_tensors
            return grad * torch.where(overflow, float("inf"), 1.0), None

    return SkipUpdateIf


BuildFn = Callable[[Any, DataInfo], "dict[str, nn.Module]"]
ObjectiveFn = Callable[[Any, "dict[str, nn.Module]", DataInfo], Objective]
SamplerFn = Callable[[Any, "dict[str, nn.Module]", DataInfo], Sampler]


@dataclass(frozen=True)
class ModelSpec:
    """One model a plugin offers. See the module docstring and ``docs/plugins.md``."""

    name: str
    task: Task
    config: type[BaseModel]  # schema of the recipe's `model:` section
    build: BuildFn  # (config, data_info) -> {name: nn.Module}: the architecture
    objective: ObjectiveFn  # (config, nets, data_info) -> Objective: the loss
    sampler: SamplerFn  # (config, nets, data_info) -> Sampler
    sampler_options: type[BaseModel] = NoOptions  # schema of `genctl sample ... key=value`
    takes_input: bool = False  # the sampler needs input images (--input)
    # Optional rules between the model's config and the rest of the recipe (train.steps,
    # data.image_size, evaluate.every): (recipe) -> None, raising genctl.errors.BadInput.
    # Called whenever a recipe is validated, so `recipes validate` and `train --dry-run` see it.
    check_recipe: Callable[[Any], None] | None = None
    description: str = ""
    paper: str = ""
    # Filled in by the registry from the package that registered the spec.
    plugin: str = field(default="", compare=False)
    package: str = field(default="", compare=False)
    version: str = field(default="", compare=False)
