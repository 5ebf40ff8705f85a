"""Classifiers by reference: a trained run of any family whose sampler can classify.

A model is a classifier for genctl when its sampler has ``classify(images) -> logits`` (N x K)
and ``features(images) -> N x D`` (the penultimate layer), both on float images in [-1, 1] on
the networks' device, ``classify`` differentiable in the images (guidance takes its gradient).
The built-in ``classifier`` family is one; a plugin's model can be another.

Whatever needs a classifier takes a RUN_ID or a checkpoint path and loads it here, like any
run: diffusion classifier guidance (``guide=classifier classifier=RUN_ID``), the domain
feature extractor of evaluation (``evaluate.feature_extractor: RUN_ID``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from genctl.errors import BadInput
from genctl.spec import DataInfo

HINT = "Train one with `genctl train recipes/classifier.yaml` (or classifier-mnist.yaml) and give its run id."


def is_classifier(sampler: Any) -> bool:
    """Whether ``sampler`` classifies (has ``classify`` and ``features``)."""
    return callable(getattr(sampler, "classify", None)) and callable(
        getattr(sampler, "features", None)
    )


@dataclass(frozen=True)
class Classifier:
    """A trained classifier loaded from a run or a checkpoint file."""

    ref: str  # what the user gave: a run id or a path
    model: Any  # genctl.resolve.LoadedModel
    sha256: str  # of the networks' weights: what the features depend on

    @property
    def info(self) -> DataInfo:
        return self.model.info

    @property
    def num_classes(self) -> int:
        return self.model.info.num_classes

    @property
    def channels(self) -> int:
        return self.model.info.channels

    @property
    def image_size(self) -> int:
        return self.model.info.image_size

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.model.info.class_names)

    def describe(self) -> str:
        """What the protocol records: ``classifier run <id> (<sha12>)`` or the file's path."""
        where = f"run {self.model.run_id}" if self.model.run_id else self.model.source
        return f"{self.model.spec.name} {where} ({self.sha256[:12]})"

    def logits(self, images: Tensor) -> Tensor:
        """N x K logits of float images in [-1, 1] on the classifier's device."""
        return self.model.sampler.classify(images)

    def features(self, images: Tensor) -> Tensor:
        """N x D penultimate features of float images in [-1, 1] on the classifier's device."""
        return self.model.sampler.features(images)


def weights_sha256(nets: dict[str, torch.nn.Module]) -> str:
    """sha256 over the networks' tensors, by name: the same weights, the same hash."""
    h = hashlib.sha256()
    for name in sorted(nets):
        for key, value in sorted(nets[name].state_dict().items()):
            h.update(f"{name}.{key}{tuple(value.shape)}{value.dtype}".encode())
            h.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_classifier(ref: str, device: torch.device | str = "cpu") -> Classifier:
    """The classifier of run ``ref`` (its final model) or of checkpoint file ``ref``.

    Bad input when ``ref`` is neither, or its model does not classify. Memoised per
    (ref, device), so guidance and evaluation during training load it once.
    """
    p = Path(ref)
    stamp = p.stat().st_mtime_ns if p.is_file() else 0  # a file written anew is loaded anew
    return _load(str(ref), str(torch.device(device)), stamp)


@lru_cache(maxsize=4)
def _load(ref: str, device: str, stamp: int) -> Classifier:
    from genctl.resolve import find_checkpoint, load_model

    path = find_checkpoint(run=ref)  # a run's final model (else its last checkpoint), or a file
    model = load_model(path, torch.device(device))
    if not is_classifier(model.sampler):
        raise BadInput(
            f"{ref} is a {model.spec.name} model, not a classifier: its sampler has no "
            "classify()/features()",
            HINT,
        )
    if not model.info.num_classes:
        raise BadInput(f"{ref}: the classifier was trained on data without classes", HINT)
    return Classifier(ref, model, weights_sha256(model.nets))
