"""Accuracy: how often a classifier names the class of a held-out image, for models that classify.

A model classifies when its sampler has ``classify(images) -> logits`` (and ``features``; see
:mod:`genctl.classifiers`). The ``accuracy`` metric runs it over the whole test split of the
recipe's data (the training split, said so, when there is none) and reports the fraction of
images whose highest logit is their label, as ``eval/accuracy``. Nothing is generated.
"""

from __future__ import annotations

from typing import Any

import torch

from genctl.errors import BadInput


def supports(sampler: Any) -> bool:
    from genctl.classifiers import is_classifier

    return is_classifier(sampler)


def held_out(recipe: Any, sampler: Any) -> Any:
    """The test images and labels ``accuracy`` scores (read when first needed), or None when
    the model does not classify."""
    if not supports(sampler):
        return None
    from genctl.evaluation.likelihood import HeldOut

    return HeldOut(sampler, recipe.data, None, 0)


def measure(
    held: Any, *, device: torch.device | str, batch_size: int, progress: bool = True
) -> tuple[dict[str, float], dict[str, str], list[str]]:
    """``accuracy`` of ``held``'s model on its images, the protocol (``eval.accuracy_*``), notes."""
    from genctl.data import to_unit
    from genctl.evaluation import content_fingerprint
    from genctl.evaluation.likelihood import in_batches

    data = held.load()
    images, labels = data["images"], data["labels"]
    if labels is None:
        raise BadInput(
            f"accuracy: {data['name']} has no class labels to score a classifier against"
        )
    if not len(images):
        raise BadInput(f"accuracy: {data['name']} holds no images")
    device = torch.device(device)
    correct = torch.zeros((), dtype=torch.long)
    with torch.no_grad():
        for x, y in in_batches(images, labels, batch_size, device, "accuracy", progress):
            logits = held.model.classify(to_unit(x))
            if logits.ndim != 2 or len(logits) != len(x):
                raise RuntimeError(
                    f"sampler.classify must return N x classes logits, got {tuple(logits.shape)}"
                )
            correct += (logits.argmax(1) == y).sum().cpu()
    protocol = {
        "eval.accuracy_set": data["name"],
        "eval.accuracy_split": data["split"],
        "eval.accuracy_num_images": str(len(images)),
        "eval.accuracy_fingerprint": content_fingerprint(images)[:16],
    }
    return {"accuracy": int(correct) / len(images)}, protocol, list(data["notes"])
