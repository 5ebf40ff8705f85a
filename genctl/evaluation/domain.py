"""FID and KID in a domain classifier's features, beside the Inception numbers.

Inception-v3 features are those of ImageNet photographs: for MNIST-like data they say little.
``evaluate.feature_extractor: RUN_ID`` (or a checkpoint path) names a trained classifier of the
domain (the ``classifier`` family, or any model whose sampler has ``features()``, see
:mod:`genctl.classifiers`); the metrics ``fid_domain`` and ``kid_domain`` are then FID and KID
computed with torch-fidelity's math on that classifier's penultimate features instead of
Inception's pool3, logged as ``eval/fid_domain``, ``eval/kid_domain_mean`` and
``eval/kid_domain_std``. They need no Inception weights.

The protocol records the classifier (``eval.domain_extractor``: its family, run or file, and a
hash of its weights; ``eval.domain_weights_sha256``), the input it was given and the feature
size, and ``eval.domain_protocol``, a hash of these with the image counts, the real set and the
sampler options: equal ids, comparable domain numbers. The features of the real images are
cached under ``$GENCTL_CACHE`` keyed by the real images' content and the classifier's weights.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from genctl.errors import BadInput

DOMAIN_METRICS = ("fid_domain", "kid_domain")
CACHE_FORMAT = 1
_MEMO: dict[str, dict[str, Any]] = {}


class DomainExtractor:
    """A classifier's penultimate features of uint8 images, and the protocol saying so."""

    def __init__(self, ref: str, device: torch.device | str) -> None:
        from genctl.classifiers import load_classifier

        self.classifier = load_classifier(ref, device)
        self.device = torch.device(device)
        info = self.classifier.info
        self.protocol: dict[str, str] = {
            "eval.domain_extractor": self.classifier.describe(),
            "eval.domain_weights_sha256": self.classifier.sha256,
            "eval.domain_input": f"{info.channels}x{info.image_size}x{info.image_size}",
        }

    def check(self, images: Tensor, what: str) -> None:
        c = self.classifier.channels
        if images.shape[1] != c:
            raise BadInput(
                f"evaluate.feature_extractor: the classifier {self.classifier.ref} takes "
                f"{c}-channel images, the {what} have {images.shape[1]}",
                "Use a classifier trained on data of the model's domain (same channels).",
            )

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        """Features (float32, CPU) of uint8 N x C x H x W images, resized to the classifier's side."""
        from genctl.data import to_unit

        x = to_unit(images.to(self.device))
        side = self.classifier.image_size
        if x.shape[-1] != side or x.shape[-2] != side:
            x = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True)
            x = x.clamp(-1, 1)
        return self.classifier.features(x).float().cpu()


def real_features(source: Any, extractor: DomainExtractor, batch_size: int) -> tuple[Tensor, str]:
    """The classifier's features of ``source.real``, from the cache when there."""
    from genctl.data import cache
    from genctl.evaluation import content_fingerprint

    extractor.check(source.real, "real images")
    key_parts = {
        "format": CACHE_FORMAT,
        "real": content_fingerprint(source.real),
        "weights": extractor.classifier.sha256,
        "input": extractor.protocol["eval.domain_input"],
    }
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:24]
    name = f"eval-domain-{key}"
    what = f"domain features of {source.real_name}"
    if key in _MEMO:
        return _MEMO[key]["features"], f"{what}: from cache"
    payload = cache.load(name)
    if payload is not None:
        note = f"{what}: from cache {cache.cache_dir() / name}.pt"
    else:
        chunks = [
            extractor(source.real[i : i + batch_size])
            for i in range(0, len(source.real), batch_size)
        ]
        payload = {"features": torch.cat(chunks)}
        saved = cache.save(name, payload)
        note = f"{what}: computed" + (f", cached at {saved}" if saved else " (cache not writable)")
    _MEMO.clear()
    _MEMO[key] = payload
    return payload["features"], note


def metrics(
    wanted: list[str],
    generated: Tensor,
    real: Tensor,
    protocol: dict[str, str],
    notes: list[str],
) -> dict[str, float]:
    """``fid_domain`` / ``kid_domain`` with torch-fidelity's math; fills in the protocol."""
    from genctl.evaluation import fidelity

    values: dict[str, float] = {}
    n, n_real = len(generated), len(real)
    protocol["eval.domain_features"] = str(generated.shape[1])
    if "fid_domain" in wanted:
        if min(n, n_real) < 2:
            raise BadInput(f"fid_domain needs at least 2 images in each set, got {n} and {n_real}")
        stats = fidelity.fid_statistics
        values["fid_domain"] = fidelity.fid(stats(generated.double()), stats(real.double()))
    if "kid_domain" in wanted:
        subset = min(fidelity.KID_SUBSET_SIZE, n, n_real)
        if subset < 2:
            raise BadInput(
                f"kid_domain needs at least 2 images in each set, got {n} generated and {n_real} real"
            )
        if subset < fidelity.KID_SUBSET_SIZE:
            notes.append(f"domain KID subset size {subset}: only {n} generated and {n_real} real")
        values["kid_domain_mean"], values["kid_domain_std"] = fidelity.kid(generated, real, subset)
        protocol["eval.kid_subset_size"] = str(subset)
        protocol["eval.kid_subsets"] = str(fidelity.KID_SUBSETS)
    keys = ("eval.num_generated", "eval.num_real", "eval.real_fingerprint", "eval.sampler")
    blob = {k: v for k, v in protocol.items() if k.startswith("eval.domain_") or k in keys}
    blob.pop("eval.domain_protocol", None)
    blob["eval.labels"] = protocol.get("eval.labels", "none")
    protocol["eval.domain_protocol"] = hashlib.sha256(
        json.dumps(blob, sort_keys=True).encode()
    ).hexdigest()[:12]
    return values
