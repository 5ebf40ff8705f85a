"""Guidance by a loss: steer an already trained model at sampling time.

At each step the sampler estimates the clean image x_0 from the noisy x_t, a guidance function
scores that estimate with a loss (one value per image), and x_t moves against the gradient of the
loss before the scheduler step (the "Guidance" section of the source documents)::

    x_t <- x_t - guide_scale * grad_{x_t} sum_i loss_i(x0_hat(x_t))

The push is applied at every step, so more steps steer harder; the default scales were chosen on
the MNIST recipe's model with DDIM-50 (``color`` 0.1, ``classifier`` 0.05).

Built in: ``color`` (MSE of the x_0 estimate to a target colour) and ``classifier`` (minus the
log-probability a classifier gives the chosen class: ``classifier=RUN_ID`` of a run of the
``classifier`` family, a checkpoint path, or a file of ``python -m genctl_ddpm.classifier``).
Other plugins add guidance functions with the ``genctl_register_guidance`` hook::

    @genctl.hookimpl
    def genctl_register_guidance(registry):
        registry.add("brightness", make_brightness_guide, default_scale=50.0,
                     description="push the mean brightness toward color[0]")

``make(options, info, device)`` receives the sampler options (``color``, ``target_class``,
``classifier`` ...), the model's DataInfo and the device, and returns ``loss(x0, t) -> N``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from genctl.errors import BadInput
from genctl.spec import DataInfo

GuideFn = Callable[[Tensor, Tensor], Tensor]  # (x0 estimate in [-1, 1], timesteps) -> N losses
MakeGuide = Callable[[Any, DataInfo, torch.device], GuideFn]


@dataclass(frozen=True)
class Guide:
    name: str
    make: MakeGuide
    default_scale: float
    description: str = ""
    plugin: str = ""


class GuidanceRegistry:
    """Guidance functions by name; a name taken twice is an error naming both plugins."""

    def __init__(self) -> None:
        self._guides: dict[str, Guide] = {}
        self.current_plugin = "genctl_ddpm"

    def add(
        self, name: str, make: MakeGuide, *, default_scale: float = 1.0, description: str = ""
    ) -> None:
        if name in self._guides:
            raise ValueError(
                f"guidance function {name!r} registered twice: by {self._guides[name].plugin} "
                f"and by {self.current_plugin}"
            )
        self._guides[name] = Guide(name, make, default_scale, description, self.current_plugin)

    def names(self) -> list[str]:
        return sorted(self._guides)

    def get(self, name: str) -> Guide:
        if name not in self._guides:
            raise BadInput(
                f"unknown guidance function {name!r}",
                f"Available: {', '.join(self.names())} (plugins add more with genctl_register_guidance).",
            )
        return self._guides[name]


def guidance_registry(manager: Any | None = None) -> GuidanceRegistry:
    """The built-in guides plus those every loaded plugin registers through the hook."""
    registry = GuidanceRegistry()
    registry.add("color", make_color_guide, default_scale=0.1, description=color_loss.__doc__ or "")
    registry.add(
        "classifier",
        make_classifier_guide,
        default_scale=0.05,
        description=classifier_loss.__doc__ or "",
    )
    if manager is None:
        from genctl.plugins import plugins

        manager = plugins().manager
    for impl in manager.hook.genctl_register_guidance.get_hookimpls():
        registry.current_plugin = impl.plugin_name
        impl.function(registry=registry)
    registry.current_plugin = "genctl_ddpm"
    return registry


# ---------------------------------------------------------------- colour


def color_loss(x0: Tensor, target: Tensor) -> Tensor:
    """Mean squared distance of each image's x_0 estimate to a target colour (``color=[r,g,b]``)."""
    return (x0 - target).pow(2).flatten(1).mean(1)


def make_color_guide(options: Any, info: DataInfo, device: torch.device) -> GuideFn:
    color = options.color
    if color is None:
        raise BadInput(
            "guide=color needs a target colour", "Add color=[r,g,b] with values in [0, 1]."
        )
    if len(color) != info.channels and not (len(color) == 3 and info.channels == 1):
        raise BadInput(
            f"color has {len(color)} values but the model makes {info.channels}-channel images",
            "Give color=[r,g,b] (a grey model uses its luminance) or color=[v] for grey.",
        )
    c = torch.tensor(color, dtype=torch.float32)
    if info.channels == 1 and len(color) == 3:
        c = (c * torch.tensor([0.299, 0.587, 0.114])).sum(0, keepdim=True)  # luminance
    target = (c * 2 - 1).to(device)[None, :, None, None]
    return lambda x0, t: color_loss(x0, target)


# ---------------------------------------------------------------- classifier


def classifier_loss(logits: Tensor, target: int) -> Tensor:
    """Minus a classifier's log-probability of ``target_class`` (``classifier=RUN_ID|PATH``)."""
    return -F.log_softmax(logits.float(), dim=1)[:, target]


@lru_cache(maxsize=4)
def _cached_classifier(path: str, device: str) -> torch.nn.Module:
    from genctl_ddpm.classifier import load_classifier

    return load_classifier(path, device)


def _is_side_script_file(ref: str) -> bool:
    """A file written by ``python -m genctl_ddpm.classifier`` (the format before classifiers
    became a family), rather than a genctl checkpoint."""
    from genctl_ddpm.classifier import FORMAT

    if not Path(ref).is_file():
        return False
    try:
        state = torch.load(ref, map_location="cpu", weights_only=True)
    except Exception:
        return False
    return isinstance(state, dict) and state.get("format") == FORMAT


def _classifier(ref: str, info: DataInfo, device: torch.device) -> tuple[GuideFn, int, int]:
    """(logits of x0, channels, classes) of a classifier run or checkpoint (genctl.classifiers:
    the ``classifier`` family), or of a side-script file. A classifier trained at another
    resolution sees x0 resized to its own, differentiably."""
    if _is_side_script_file(ref):
        model = _cached_classifier(ref, str(device))
        return model, model.channels, model.num_classes
    from genctl.classifiers import load_classifier

    clf = load_classifier(ref, device)
    side = clf.image_size

    def logits(x0: Tensor) -> Tensor:
        if x0.shape[-1] != side or x0.shape[-2] != side:
            x0 = F.interpolate(x0, size=(side, side), mode="bilinear", antialias=True)
        return clf.logits(x0)

    return logits, clf.channels, clf.num_classes


def make_classifier_guide(options: Any, info: DataInfo, device: torch.device) -> GuideFn:
    if options.classifier is None:
        raise BadInput(
            "guide=classifier needs a classifier",
            "Add classifier=RUN_ID of a classifier run (genctl train recipes/classifier-mnist.yaml)"
            " or classifier=PATH of its checkpoint.",
        )
    if options.target_class is None:
        raise BadInput("guide=classifier needs the class to steer toward", "Add target_class=N.")
    logits, channels, num_classes = _classifier(str(options.classifier), info, device)
    if channels != info.channels:
        raise BadInput(
            f"the classifier takes {channels}-channel images, the model makes {info.channels}",
            "Use a classifier trained on the same data as the diffusion model.",
        )
    if not 0 <= options.target_class < num_classes:
        raise BadInput(
            f"target_class={options.target_class} is out of range",
            f"The classifier knows classes 0..{num_classes - 1}.",
        )
    return lambda x0, t: classifier_loss(logits(x0), options.target_class)
