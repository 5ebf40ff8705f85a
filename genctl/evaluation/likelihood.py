"""Likelihood: how probable a model finds held-out images, for the families that can say.

Likelihood models (an autoregressive model's exact likelihood, a VAE's bound) are judged by the
negative log-likelihood of test images they never trained on, the number their papers report,
not by samples. A family opts in with two optional sampler methods (``docs/plugins.md``):

* ``nll(images, labels, generator) -> Tensor``: the negative log-likelihood in nats of each
  image, a float tensor of N. ``images`` are the data as stored, uint8 N x C x H x W on the
  networks' device, so a discrete model scores exactly the values it was trained on;
  ``labels`` are the images' int64 class indices when the data has them (else None);
  ``generator`` is a CPU ``torch.Generator`` for any randomness (dequantisation noise, a
  posterior sample), so the same seed gives the same number.
* ``nll_protocol() -> dict[str, str]``: how the family computed it, recorded as
  ``eval.nll_<key>``: ``estimator`` (exact, or which bound), ``data`` (what the number is the
  likelihood of: the 8-bit values, ``k`` quantisation levels, grey levels under a Bernoulli
  decoder, ...), ``dequantization`` (none for a discrete model; how a continuous density is
  turned into the probability of discrete data).

:func:`measure` runs it over the test split (the training split, said so, when there is none):
all of it, as papers do, or a fixed subset of ``evaluate.nll_images`` images, the same for every
run. It reports

* ``nll``: the mean negative log-likelihood, nats per image;
* ``bpd``: the same in bits per dimension, ``nll / (C * H * W * ln 2)``.

Both mean what the family's ``data`` entry says they mean: the standard figures (3.03 bits/dim
for the gated PixelCNN on CIFAR-10) are NLLs of the 8-bit data, and a model of coarser data
(fewer levels) or a bound on a different likelihood gives numbers that do not compare with them.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from genctl.errors import BadInput

NLL_PREFIX = "eval.nll_"
CORE_KEYS = ("set", "split", "num_images", "dims", "fingerprint", "seed", "protocol")
_KEY = re.compile(r"^[a-z][a-z0-9_]*$")


def supports(sampler: Any) -> bool:
    """Whether ``sampler`` reports a likelihood (has ``nll`` and ``nll_protocol``)."""
    return callable(getattr(sampler, "nll", None)) and callable(
        getattr(sampler, "nll_protocol", None)
    )


def in_batches(
    images: Tensor,
    labels: Tensor | None,
    batch_size: int,
    device: torch.device,
    desc: str,
    progress: bool = True,
):
    """``(images, labels)`` of a held-out set, ``batch_size`` at a time on ``device`` (labels
    None when the set has none), with a progress bar on a terminal: the one pass the test-split
    metrics (likelihood, accuracy, anomaly scores) make over their images."""
    with tqdm(
        total=len(images),
        desc=desc,
        unit="img",
        leave=False,
        disable=None if progress else True,
        dynamic_ncols=True,
    ) as bar:
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].to(device)
            y = None if labels is None else labels[start : start + batch_size].to(device)
            yield x, y
            bar.update(len(x))


@dataclass
class HeldOut:
    """The test images a model's likelihood is measured on; read when first needed, so an
    evaluation that does not ask for ``nll`` never loads them."""

    model: Any  # the sampler: nll(images, labels, generator), nll_protocol()
    data: Any  # the recipe's data section
    limit: int | None  # at most this many images (evaluate.nll_images; None: all)
    seed: int  # of the generator given to nll()
    _loaded: dict[str, Any] = field(default_factory=dict, repr=False)

    def load(self) -> dict[str, Any]:
        if not self._loaded:
            from genctl.evaluation.sources import _test_split, _where

            dataset, notes = _test_split(self.data)
            images = dataset.tensors["image"]
            labels = dataset.labels
            index = subset_index(len(images), self.limit or len(images))
            split = "test" if not notes else self.data.split
            total = len(images)
            name = f"{_where(self.data)} {split} ({len(index)}"
            name += f" of {total}, fixed subset)" if len(index) < total else ")"
            self._loaded.update(
                images=images[index],
                labels=None if labels is None else labels[index],
                name=name,
                split=split,
                notes=notes,
            )
        return self._loaded


def held_out(recipe: Any, sampler: Any, limit: int | None, seed: int) -> HeldOut | None:
    """The :class:`HeldOut` set of a recipe's model, or None when its sampler has no ``nll``."""
    if not supports(sampler):
        return None
    return HeldOut(sampler, recipe.data, limit, seed)


def subset_index(total: int, n: int) -> Tensor:
    """Indices of at most ``n`` of ``total`` items: all, or a fixed random subset in order
    (the same for every run, as the real images of FID are)."""
    from genctl.evaluation.sources import REAL_SUBSET_SEED

    if n >= total:
        return torch.arange(total)
    order = torch.randperm(total, generator=torch.Generator().manual_seed(REAL_SUBSET_SEED))
    return order[:n].sort().values


def bits_per_dim(nll_nats: float, dims: int) -> float:
    """Nats per image -> bits per dimension (sub-pixel)."""
    return nll_nats / (dims * math.log(2))


def measure(
    held: HeldOut, *, device: torch.device | str, batch_size: int, progress: bool = True
) -> tuple[dict[str, float], dict[str, str], list[str]]:
    """``nll`` and ``bpd`` of ``held``'s images, the protocol (``eval.nll_*``) and notes."""
    data = held.load()
    images, labels = data["images"], data["labels"]
    if not len(images):
        raise BadInput(f"nll: {data['name']} holds no images to measure the likelihood of")
    family = _family_protocol(held.model)
    device = torch.device(device)
    generator = torch.Generator().manual_seed(held.seed)
    total = torch.zeros((), dtype=torch.float64)
    with torch.no_grad():
        for x, y in in_batches(images, labels, batch_size, device, "likelihood", progress):
            nll = held.model.nll(x, y, generator)
            if not isinstance(nll, Tensor) or nll.shape != (len(x),):
                got = tuple(nll.shape) if isinstance(nll, Tensor) else type(nll).__name__
                raise RuntimeError(
                    f"sampler.nll must return one value per image ({len(x)}), got {got}"
                )
            total += nll.detach().double().sum().cpu()
    mean = float(total) / len(images)
    if not math.isfinite(mean):
        raise RuntimeError(f"the model's negative log-likelihood is not finite ({mean})")
    c, h, w = images.shape[1:]
    values = {"nll": mean, "bpd": bits_per_dim(mean, c * h * w)}
    from genctl.evaluation import content_fingerprint

    protocol = {
        "eval.nll_set": data["name"],
        "eval.nll_split": data["split"],
        "eval.nll_num_images": str(len(images)),
        "eval.nll_dims": f"{c}x{h}x{w}",
        "eval.nll_fingerprint": content_fingerprint(images)[:16],
        "eval.nll_seed": str(held.seed),
        **{NLL_PREFIX + k: v for k, v in family.items()},
    }
    protocol["eval.nll_protocol"] = nll_protocol_id(protocol)
    return values, protocol, list(data["notes"])


def nll_protocol_id(protocol: dict[str, str]) -> str:
    """A short hash of the ``eval.nll_*`` entries: equal ids, comparable ``nll``/``bpd``."""
    keys = {k: v for k, v in protocol.items() if k.startswith(NLL_PREFIX)}
    keys.pop("eval.nll_protocol", None)
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:12]


def _family_protocol(model: Any) -> dict[str, str]:
    raw = model.nll_protocol()
    if not isinstance(raw, dict) or not raw:
        raise RuntimeError("sampler.nll_protocol() must return a non-empty dict of strings")
    out = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not _KEY.match(key) or key in CORE_KEYS:
            raise RuntimeError(
                f"sampler.nll_protocol(): key {key!r} is not a lower-case name of the family's "
                f"own (genctl records {', '.join(CORE_KEYS)})"
            )
        out[key] = str(value)
    return out
