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

from collections.abc import Callable, Mapping, Sequence
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

    ``sample(n, options, generator, inputs=None)``: ``n`` images in [0, 1], N x C x H x W.
    ``options`` is an instance of the spec's ``sampler_options`` schema. All randomness comes
    from ``generator`` (a CPU ``torch.Generator``), so the same seed gives the same images.
    ``inputs`` (float [-1, 1], on the networks' device) is given to samplers whose spec says
    ``takes_input=True`` (translation, super-resolution, img2img); then ``n == len(inputs)``.

    Optional: ``preview(batch, generator) -> (images in [0, 1], nrow)`` draws the training-time
    grid from a fixed batch of data (input | output | target side by side, say). Without it the
    trainer shows ``sample()`` with default options and a fixed seed.

    Optional, for likelihood models: ``nll(images, labels, generator) -> Tensor``, the negative
    log-likelihood in nats (or an upper bound on it) of each of N uint8 test images (on the
    networks' device; ``labels`` their classes or None), and ``nll_protocol() -> dict[str, str]``
    saying how (``estimator``, ``data``, ``dequantization``). Evaluation's ``nll`` metric
    reports their mean as ``nll`` and ``bpd`` (see :mod:`genctl.evaluation.likelihood`).

    Evaluation (FID, KID, ...) calls ``sample()`` with default options, batch by batch; a model
    with classes should then draw them evenly (label ``i % num_classes``). Optional:
    ``eval_images(n, batch_size, generator)`` yields the ``n`` images to evaluate instead, in
    batches of at most ``batch_size`` (to pick evaluation options or balance classes yourself).
    """

    def sample(
        self,
        n: int,
        options: Any,
        generator: torch.Generator,
        inputs: Tensor | None = None,
    ) -> Tensor: ...


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
