"""Anomaly detection: how well a model's per-image anomaly scores pick out held-out classes.

A family opts in with one optional sampler method (``docs/plugins.md``):

* ``anomaly_scores(images, generator) -> dict[str, Tensor]``: one or more kinds of anomaly
  score of each image, each a float tensor of N, higher meaning more anomalous (an autoencoder's
  reconstruction error, a VAE's negative ELBO). ``images`` are the data as stored, uint8
  N x C x H x W on the networks' device; ``generator`` is a CPU ``torch.Generator`` for any
  randomness (a posterior sample), so the same seed gives the same scores. Kind names are
  lower-case (``mse``, ``nelbo``): they name the CSV columns of ``genctl score`` and the metrics.

The ``auroc`` metric scores the whole test split of the recipe's data (the training split, said
so, when there is none), with every class in it whatever ``data.exclude_classes`` says: the
images of ``evaluate.anomaly_classes`` are the anomalies, the others normal. Per score kind it
reports ``auroc_<kind>`` (the area under the ROC curve: the probability that an anomaly scores
higher than a normal image, ties counting half) and ``auprc_<kind>`` (average precision, whose
chance level is the fraction of anomalies, recorded with the counts). Nothing is generated.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from genctl.errors import BadInput

_KIND = re.compile(r"^[a-z][a-z0-9_]*$")
PREFIX = "eval.anomaly_"


def supports(sampler: Any) -> bool:
    """Whether ``sampler`` gives per-image anomaly scores (has ``anomaly_scores``)."""
    return callable(getattr(sampler, "anomaly_scores", None))


# ---------------------------------------------------------------- the two figures


def _checked(scores: Tensor, is_anomaly: Tensor) -> tuple[Tensor, Tensor, int, int]:
    s, y = scores.detach().double().flatten().cpu(), is_anomaly.detach().bool().flatten().cpu()
    if s.shape != y.shape:
        raise ValueError(f"{len(s)} scores for {len(y)} labels")
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        raise ValueError("AUROC and AUPRC need both normal and anomalous images")
    if not torch.isfinite(s).all():
        raise ValueError("anomaly scores must be finite")
    return s, y, n_pos, len(y) - n_pos


def auroc(scores: Tensor, is_anomaly: Tensor) -> float:
    """Area under the ROC curve of ``scores`` (higher: more anomalous) for the boolean labels
    ``is_anomaly``, from the ranks (Mann-Whitney U / (n_anomalous * n_normal)); tied scores get
    their average rank, so a tie between an anomaly and a normal image counts half."""
    s, y, n_pos, n_neg = _checked(scores, is_anomaly)
    _, inverse, counts = torch.unique(s, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    ranks = ((ends - counts + 1 + ends) / 2)[inverse]  # 1-based, averaged over ties
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def average_precision(scores: Tensor, is_anomaly: Tensor) -> float:
    """Average precision (the area under the precision-recall curve as a step sum) of
    ``scores`` for the anomalies: ``sum_k (R_k - R_{k-1}) P_k`` over the distinct scores taken
    as thresholds from the highest down, as scikit-learn's ``average_precision_score``."""
    s, y, n_pos, _ = _checked(scores, is_anomaly)
    _, inverse, counts = torch.unique(s, return_inverse=True, return_counts=True)
    positives = torch.zeros(len(counts), dtype=torch.float64).index_add_(0, inverse, y.double())
    positives, counts = positives.flip(0), counts.flip(0).double()  # highest score first
    precision = positives.cumsum(0) / counts.cumsum(0)
    return float((positives / n_pos * precision).sum())


# ---------------------------------------------------------------- scoring images


def score_images(
    sampler: Any,
    images: Tensor,
    *,
    device: torch.device | str,
    batch_size: int,
    seed: int,
    progress: bool = True,
) -> dict[str, Tensor]:
    """Every kind of anomaly score of uint8 ``images`` (N x C x H x W) in batches: float64 N on
    the CPU per kind, the same for a seed whatever the batch size's effect on the generator."""
    device = torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    out: dict[str, list[Tensor]] = {}
    from genctl.evaluation.likelihood import in_batches

    with torch.no_grad():
        for x, _ in in_batches(images, None, batch_size, device, "anomaly scores", progress):
            got = sampler.anomaly_scores(x, generator)
            kinds = _check_scores(got, len(x))
            if out and list(out) != kinds:
                raise RuntimeError(
                    f"sampler.anomaly_scores gave kinds {kinds}, then {list(out)} before"
                )
            for kind in kinds:
                out.setdefault(kind, []).append(got[kind].detach().double().cpu())
    return {kind: torch.cat(parts) for kind, parts in out.items()}


def _check_scores(got: Any, n: int) -> list[str]:
    if not isinstance(got, dict) or not got:
        raise RuntimeError("sampler.anomaly_scores must return a non-empty dict of kind -> scores")
    for kind, value in got.items():
        if not isinstance(kind, str) or not _KIND.match(kind):
            raise RuntimeError(
                f"sampler.anomaly_scores: kind {kind!r} is not a lower-case name (mse, nelbo)"
            )
        if not isinstance(value, Tensor) or value.shape != (n,):
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise RuntimeError(
                f"sampler.anomaly_scores[{kind!r}] must hold one value per image ({n}), got {shape}"
            )
        if not torch.isfinite(value).all():
            raise RuntimeError(f"sampler.anomaly_scores[{kind!r}] is not finite")
    return list(got)


# ---------------------------------------------------------------- the `auroc` metric


@dataclass
class AnomalySet:
    """The labelled test images the ``auroc`` metric scores; read when first needed."""

    model: Any  # the sampler: anomaly_scores(images, generator)
    data: Any  # the recipe's data section
    classes: list[int]  # evaluate.anomaly_classes
    seed: int  # of the generator given to anomaly_scores()


def held_out(recipe: Any, sampler: Any, seed: int) -> AnomalySet | None:
    """The :class:`AnomalySet` of a recipe's model, or None when its sampler gives no scores."""
    if not supports(sampler):
        return None
    return AnomalySet(sampler, recipe.data, list(recipe.evaluate.anomaly_classes), seed)


def measure(
    held: AnomalySet, *, device: torch.device | str, batch_size: int, progress: bool = True
) -> tuple[dict[str, float], dict[str, str], list[str]]:
    """``auroc_<kind>`` and ``auprc_<kind>`` of ``held``, the protocol (``eval.anomaly_*``) and
    notes."""
    from genctl.evaluation import content_fingerprint
    from genctl.evaluation.sources import _test_split, _where

    if not held.classes:
        raise BadInput(
            "auroc: no anomalous classes named",
            "Set evaluate.anomaly_classes: [CLASS, ...] (class indices of the data), the classes "
            "the model was trained without (data.exclude_classes).",
        )
    trained_without = sorted(set(held.data.exclude_classes))
    cfg = held.data.model_copy(update={"exclude_classes": [], "labels": True})
    dataset, notes = _test_split(cfg)
    images, labels = dataset.tensors["image"], dataset.labels
    names = dataset.info.class_names
    if labels is None:
        raise BadInput(
            f"auroc: {_where(cfg)} has no class labels to say which images are anomalies"
        )
    classes = sorted(set(held.classes))
    wrong = [c for c in classes if not 0 <= c < len(names)]
    if wrong:
        raise BadInput(
            f"evaluate.anomaly_classes: {wrong} not among the class indices 0..{len(names) - 1}",
            "Classes: " + ", ".join(f"{i}={n}" for i, n in enumerate(names)) + ".",
        )
    is_anomaly = torch.isin(labels, torch.tensor(classes, dtype=labels.dtype))
    n_anomalous = int(is_anomaly.sum())
    split = "test" if not notes else cfg.split
    if n_anomalous in (0, len(labels)):
        raise BadInput(
            f"auroc: the {split} split holds {n_anomalous} anomalous images of {len(labels)}; "
            "it needs both normal and anomalous ones",
            "Name classes in evaluate.anomaly_classes that are some, not all, of the data's.",
        )
    if set(classes) - set(trained_without):
        notes.append(
            f"anomaly classes {sorted(set(classes) - set(trained_without))} were in the training "
            "data (not in data.exclude_classes): the model has seen them"
        )
    scores = score_images(
        held.model, images, device=device, batch_size=batch_size, seed=held.seed, progress=progress
    )
    values: dict[str, float] = {}
    for kind, s in scores.items():
        values[f"auroc_{kind}"] = auroc(s, is_anomaly)
        values[f"auprc_{kind}"] = average_precision(s, is_anomaly)
    protocol = {
        "eval.anomaly_set": f"{_where(cfg)} {split} ({len(images)}, every class)",
        "eval.anomaly_split": split,
        "eval.anomaly_classes": ", ".join(
            str(c) if names[c] == str(c) else f"{c} ({names[c]})" for c in classes
        ),
        "eval.anomaly_num_anomalous": str(n_anomalous),
        "eval.anomaly_num_normal": str(len(images) - n_anomalous),
        "eval.anomaly_trained_without": json.dumps(trained_without),
        "eval.anomaly_scores": ", ".join(scores),
        "eval.anomaly_fingerprint": content_fingerprint(images)[:16],
        "eval.anomaly_seed": str(held.seed),
    }
    protocol["eval.anomaly_protocol"] = anomaly_protocol_id(protocol)
    return values, protocol, notes


def anomaly_protocol_id(protocol: dict[str, str]) -> str:
    """A short hash of the ``eval.anomaly_*`` entries: equal ids, comparable AUROC/AUPRC."""
    keys = {k: v for k, v in protocol.items() if k.startswith(PREFIX)}
    keys.pop("eval.anomaly_protocol", None)
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:12]
