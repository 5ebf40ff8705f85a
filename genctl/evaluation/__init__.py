"""Evaluation: FID, KID, IS and precision/recall through torch-fidelity, PSNR/SSIM for paired
tasks, the negative log-likelihood of test images for models that have one, the test accuracy
of classifiers, and FID/KID in a domain classifier's features (``fid_domain``, ``kid_domain``).

:func:`evaluate` takes an :class:`ImageSource` (generated images straight from the sampler, and
the real images to judge them against) and returns the numbers with the protocol that produced
them. torch-fidelity does the feature extraction (its ``inception-v3-compat`` extractor) and the
metric math; genctl feeds it uint8 tensors directly (no PNG round trip), caches the features of
the real images on disk under ``$GENCTL_CACHE`` (default ``~/.cache/genctl``) keyed by a hash of
their content and of the protocol, and records the protocol next to every number.

The trainer calls :func:`evaluate_in_training` every ``evaluate.every`` steps; ``genctl evaluate``
calls :func:`evaluate_checkpoint`. Only :mod:`genctl.evaluation.fidelity` imports torch-fidelity,
and only when Inception metrics are asked for.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from genctl.errors import BadInput
from genctl.evaluation.quality import paired_protocol, paired_scores, psnr, ssim
from genctl.evaluation.sources import ImageSource, StreamedImages, source_for, to_uint8

__all__ = [
    "METRICS",
    "Evaluation",
    "check_ready",
    "ImageSource",
    "evaluate",
    "evaluate_in_training",
    "psnr",
    "source_for",
    "ssim",
]

INCEPTION_METRICS = ("fid", "kid", "isc", "prc")  # torch-fidelity, Inception features
PAIRED_METRICS = ("psnr", "ssim")  # one output against its own target
LIKELIHOOD_METRICS = ("nll",)  # the model's own likelihood of test images (likelihood.py)
CLASSIFIER_METRICS = ("accuracy",)  # a classifier's on test images (classification.py)
ANOMALY_METRICS = ("auroc",)  # anomaly scores of labelled test images (anomaly.py)
DOMAIN_METRICS = (
    "fid_domain",
    "kid_domain",
)  # in evaluate.feature_extractor's features (domain.py)
HELD_OUT_METRICS = LIKELIHOOD_METRICS + CLASSIFIER_METRICS + ANOMALY_METRICS  # nothing generated
METRICS = (
    INCEPTION_METRICS
    + PAIRED_METRICS
    + LIKELIHOOD_METRICS
    + CLASSIFIER_METRICS
    + DOMAIN_METRICS
    + ANOMALY_METRICS
)
NEED_REAL = ("fid", "kid", "prc")
PAIRED_TASKS = ("paired", "super_resolution")  # outputs with their own targets
RESULT_KEYS = {  # metric -> the names it reports (logged as eval/<name>)
    "fid": ("fid",),
    "kid": ("kid_mean", "kid_std"),
    "isc": ("isc_mean", "isc_std"),
    "prc": ("precision", "recall"),
    "psnr": ("psnr",),
    "ssim": ("ssim",),
    "nll": ("nll", "bpd"),
    "accuracy": ("accuracy",),
    "fid_domain": ("fid_domain",),
    "kid_domain": ("kid_domain_mean", "kid_domain_std"),
    "auroc": (),  # auroc_<kind>, auprc_<kind> per score kind of the model (anomaly.py)
}
CACHE_FORMAT = 1  # bump when what is cached for a key changes


@dataclass
class Evaluation:
    """What :func:`evaluate` found: metric values, the protocol behind them, and notes."""

    # fid, kid_mean, kid_std, isc_mean, isc_std, precision, recall, psnr, ssim, psnr_bicubic, ...
    metrics: dict[str, float]
    protocol: dict[str, str]  # eval.* keys: recorded as MLflow tags beside the numbers
    notes: list[str] = field(default_factory=list)  # what the user should know (cache, KID subset)

    def logged(self) -> dict[str, float]:
        """The metrics under the names genctl logs: ``eval/fid``, ``eval/kid_mean``, ..."""
        return {f"eval/{k}": v for k, v in self.metrics.items()}


def parse_metrics(names: Iterable[str]) -> list[str]:
    """Validate metric names (``fid``, ``kid``, ``isc``, ``prc``, ``psnr``, ``ssim``, ``nll``)."""
    out = []
    for name in names:
        name = name.strip().lower()
        if not name:
            continue
        if name not in METRICS:
            raise BadInput(f"unknown metric {name!r}", f"Metrics: {', '.join(METRICS)}.")
        if name not in out:
            out.append(name)
    if not out:
        raise BadInput("no metric to compute", f"Name one or more of: {', '.join(METRICS)}.")
    return out


# ---------------------------------------------------------------- the evaluation


def evaluate(
    source: ImageSource,
    metrics: Iterable[str],
    *,
    weights: str | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    progress: bool = True,
    feature_extractor: str | None = None,
) -> Evaluation:
    """Compute ``metrics`` on ``source``.

    Paired sources (translation with aligned targets, super-resolution) always get PSNR and SSIM,
    and each baseline (``source.baselines``) gets ``psnr_<name>`` and ``ssim_<name>``; with
    ``source.y_channel`` (super-resolution) they are of the Y channel, after cropping
    ``source.border`` px, and ``psnr_rgb``/``ssim_rgb`` (and ``psnr_rgb_<name>``, ...) give RGB.
    ``nll`` (``nll`` and ``bpd``) scores the test images of ``source.likelihood`` under the
    model and generates nothing (see :mod:`genctl.evaluation.likelihood`).
    ``weights`` is the local Inception weights file (else ``$GENCTL_INCEPTION_WEIGHTS``, else
    torch-fidelity's download).
    ``accuracy`` scores a classifier on the test images of ``source.classifier``.
    ``fid_domain`` and ``kid_domain`` are FID and KID in the features of the classifier
    ``feature_extractor`` (a RUN_ID or checkpoint path; see :mod:`genctl.evaluation.domain`).
    """
    wanted = parse_metrics(metrics)
    if not source.paired and any(m in PAIRED_METRICS for m in wanted):
        raise BadInput(
            "PSNR and SSIM compare each output with its own target; this model's outputs have none",
            "They apply to paired translation and super-resolution; use fid, kid, isc or prc here.",
        )
    if "nll" in wanted and source.likelihood is None:
        raise BadInput(
            "nll: this model reports no likelihood of images",
            "nll applies to likelihood models whose sampler has nll() (see docs/plugins.md); "
            "use fid, kid, isc or prc here.",
        )
    if "auroc" in wanted and source.anomaly is None:
        raise BadInput(
            "auroc: this model gives no anomaly scores of images",
            "auroc applies to models whose sampler has anomaly_scores() (see docs/plugins.md).",
        )
    if "accuracy" in wanted and source.classifier is None:
        raise BadInput(
            "accuracy: this model does not classify images",
            "accuracy applies to classifiers, whose sampler has classify() (the classifier "
            "family); use fid, kid, isc or prc here.",
        )
    domain = [m for m in wanted if m in DOMAIN_METRICS]
    if domain and not feature_extractor:
        raise BadInput(
            f"{', '.join(domain)}: no domain classifier to take features from",
            "Set evaluate.feature_extractor: RUN_ID (or a checkpoint path) of a trained "
            "classifier of this data (genctl train recipes/classifier.yaml).",
        )
    if domain and source.real is None:
        raise BadInput(f"{', '.join(domain)}: this image source has no real images to compare with")
    inception = [m for m in wanted if m in INCEPTION_METRICS]
    if any(m in NEED_REAL for m in inception) and source.real is None:
        raise BadInput(
            f"{', '.join(inception)}: this image source has no real images to compare with"
        )
    device = torch.device(device)
    notes = list(source.notes)
    protocol: dict[str, str] = {**source.protocol, "eval.num_generated": str(source.count)}
    values: dict[str, float] = {}
    held_protocol: dict[str, str] = {}  # of the metrics on test images (nll, accuracy)

    extractor = weights_file = real = None
    if inception:
        from genctl.evaluation import fidelity

        weights_file = fidelity.resolve_weights(weights)
        layers = sorted({fidelity.feature_layer(m) for m in inception})
        extractor = fidelity.feature_extractor(weights_file, layers, device)
        protocol.update(
            {
                "eval.feature_extractor": fidelity.FEATURE_EXTRACTOR,
                "eval.weights_sha256": weights_file.sha256,
                "eval.input_size": str(fidelity.INPUT_SIZE),
                "eval.torch_fidelity": fidelity.VERSION,
            }
        )
    if any(m in NEED_REAL for m in inception):
        real, real_note = _real_features(
            source, extractor, weights_file, device, batch_size, progress
        )
        notes.append(real_note)
        protocol["eval.num_real"] = str(len(real["features"]))
        protocol["eval.real_set"] = source.real_name
        protocol["eval.real_fingerprint"] = real["fingerprint"]
    domain_extractor = domain_real = None
    if domain:
        from genctl.evaluation import domain as domain_features

        domain_extractor = domain_features.DomainExtractor(feature_extractor, device)
        protocol.update(domain_extractor.protocol)
        domain_real, real_note = domain_features.real_features(source, domain_extractor, batch_size)
        notes.append(real_note)
        protocol["eval.num_real"] = str(len(source.real))
        protocol["eval.real_set"] = source.real_name
        protocol["eval.real_fingerprint"] = content_fingerprint(source.real)[:16]

    if "nll" in wanted:
        from genctl.evaluation import likelihood

        nll, nll_protocol, nll_notes = likelihood.measure(
            source.likelihood, device=device, batch_size=batch_size, progress=progress
        )
        values.update(nll)
        protocol.update(nll_protocol)
        held_protocol.update(nll_protocol)
        notes += nll_notes
    if "accuracy" in wanted:
        from genctl.evaluation import classification

        acc, acc_protocol, acc_notes = classification.measure(
            source.classifier, device=device, batch_size=batch_size, progress=progress
        )
        values.update(acc)
        protocol.update(acc_protocol)
        held_protocol.update(acc_protocol)
        notes += [n for n in acc_notes if n not in notes]
    if "auroc" in wanted:
        values.update(_anomaly(source, device, batch_size, progress, held_protocol, notes))
        protocol.update({k: v for k, v in held_protocol.items() if k.startswith("eval.anomaly_")})
    if not inception and not domain and not source.paired:  # held-out metrics: nothing generated
        return Evaluation(values, held_protocol, notes)

    generated, paired = _generated_pass(
        source, extractor, device, batch_size, progress, domain_extractor
    )
    if generated["count"] < source.count:
        notes.append(f"the source gave {generated['count']} images of the {source.count} asked for")
        protocol["eval.num_generated"] = str(generated["count"])
    if inception:
        values.update(_inception_metrics(inception, generated, real, protocol, notes))
    if domain:
        values.update(
            domain_features.metrics(domain, generated["domain"], domain_real, protocol, notes)
        )
    for key, vals in paired.items():
        values[key] = float(torch.cat(vals).mean())
    for name, batches in source.baselines.items():
        base = _paired_quality(batches, source, batch_size)
        values.update({f"{key}_{name}": value for key, value in base.items()})
    if paired:
        protocol["eval.paired_metrics"] = paired_protocol(
            y_channel=source.y_channel, border=source.border, channels=source.real.shape[1]
        )
    protocol["eval.protocol"] = protocol_id(protocol)
    return Evaluation(values, protocol, notes)


def _anomaly(source, device, batch_size, progress, protocol, notes) -> dict[str, float]:
    """``auroc_<kind>``/``auprc_<kind>`` (see :mod:`genctl.evaluation.anomaly`); its protocol
    and notes are added to ``protocol`` and ``notes``."""
    from genctl.evaluation import anomaly

    values, anomaly_protocol, anomaly_notes = anomaly.measure(
        source.anomaly, device=device, batch_size=batch_size, progress=progress
    )
    protocol.update(anomaly_protocol)
    notes += [n for n in anomaly_notes if n not in notes]
    return values


def _inception_metrics(inception, generated, real, protocol, notes) -> dict[str, float]:
    """torch-fidelity's math on the features; small sets adapt KID's subsets and IS's splits."""
    from genctl.evaluation import fidelity

    values: dict[str, float] = {}
    n = generated["count"]
    pool = generated.get(fidelity.feature_layer("fid"))
    n_real = len(real["features"]) if real is not None else 0
    if "fid" in inception:
        values["fid"] = fidelity.fid(fidelity.fid_statistics(pool), real["stats"])
    if "kid" in inception:
        subset = min(fidelity.KID_SUBSET_SIZE, n, n_real)
        if subset < 2:
            raise BadInput(
                f"KID needs at least 2 images in each set, got {n} generated and {n_real} real"
            )
        if subset < fidelity.KID_SUBSET_SIZE:
            notes.append(
                f"KID subset size {subset} instead of {fidelity.KID_SUBSET_SIZE}: only {n} generated "
                f"and {n_real} real images"
            )
        values["kid_mean"], values["kid_std"] = fidelity.kid(pool, real["features"], subset)
        protocol["eval.kid_subset_size"] = str(subset)
        protocol["eval.kid_subsets"] = str(fidelity.KID_SUBSETS)
    if "isc" in inception:
        splits = min(fidelity.ISC_SPLITS, n)
        if splits < fidelity.ISC_SPLITS:
            notes.append(
                f"IS over {splits} splits instead of {fidelity.ISC_SPLITS}: only {n} images"
            )
        logits = generated[fidelity.feature_layer("isc")]
        values["isc_mean"], values["isc_std"] = fidelity.inception_score(logits, splits)
        protocol["eval.isc_splits"] = str(splits)
    if "prc" in inception:
        k = fidelity.PRC_NEIGHBORHOOD
        if min(n, n_real) <= k:
            raise BadInput(
                f"precision/recall need more than {k} images in each set, got {n} generated and {n_real} real"
            )
        values["precision"], values["recall"] = fidelity.precision_recall(pool, real["features"])
        protocol["eval.prc_neighborhood"] = str(k)
    return values


# What makes two runs' numbers comparable. Per-metric settings (KID subsets, IS splits) follow
# from the counts, so asking for more metrics does not change the id.
PROTOCOL_KEYS = (
    "eval.feature_extractor",
    "eval.weights_sha256",
    "eval.input_size",
    "eval.torch_fidelity",
    "eval.num_generated",
    "eval.num_real",
    "eval.real_fingerprint",
    "eval.paired_metrics",
)
# Hashed only when not the default shown here: the sampler options that differ from the
# defaults and the labels drawn (sources.sampler_protocol), so ids made before they existed stand.
PROTOCOL_DEFAULTS = {"eval.sampler": "{}", "eval.labels": "none"}


def protocol_id(protocol: dict[str, str]) -> str:
    """A short hash of how the numbers were made: equal ids, comparable numbers."""
    keys = {k: protocol.get(k) for k in PROTOCOL_KEYS}
    keys.update({k: protocol[k] for k, v in PROTOCOL_DEFAULTS.items() if protocol.get(k, v) != v})
    blob = json.dumps(keys, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _bar(total: int, desc: str, enabled: bool) -> tqdm:
    return tqdm(
        total=total,
        desc=desc,
        unit="img",
        leave=False,
        disable=None if enabled else True,  # None: shown on a terminal, not in logs
        dynamic_ncols=True,
    )


def _rgb(images: Tensor) -> Tensor:
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def _generated_pass(
    source, extractor, device, batch_size, progress, domain=None
) -> tuple[dict, dict]:
    """One pass over the generated images: Inception features, the domain classifier's
    (``domain``, under the key ``"domain"``) and, when paired, PSNR/SSIM."""
    features: dict[str, list[Tensor]] = {}
    paired: dict[str, list[Tensor]] = {}
    done = 0
    extracting = extractor is not None or domain is not None
    desc = "generating + features" if extracting else "generating"
    with _bar(source.count, desc, progress) as bar, torch.no_grad():
        for batch in source.generate(batch_size):
            images = to_uint8(batch)[: source.count - done]
            if source.paired:
                _compare(images, source.real[done : done + len(images)], paired, source)
            if extractor is not None:
                for layer, value in _extract(extractor, images, device).items():
                    features.setdefault(layer, []).append(value)
            if domain is not None:
                if done == 0:
                    domain.check(images, "generated images")
                features.setdefault("domain", []).append(domain(images))
            done += len(images)
            bar.update(len(images))
            if done >= source.count:
                break
    if done == 0:
        raise BadInput("the image source gave no images to evaluate")
    out: dict[str, Any] = {layer: torch.cat(v) for layer, v in features.items()}
    out["count"] = done
    return out, paired


def _extract(extractor, images: Tensor, device: torch.device) -> dict[str, Tensor]:
    from genctl.evaluation.fidelity import extract

    return extract(extractor, _rgb(images).to(device, non_blocking=True))


def _compare(images: Tensor, targets: Tensor, out: dict[str, list[Tensor]], source) -> None:
    if images.shape != targets.shape:
        raise BadInput(
            f"outputs of shape {tuple(images.shape[1:])} cannot be compared with targets of shape "
            f"{tuple(targets.shape[1:])}",
            "A paired model must return images of its target's size and channels.",
        )
    x = images.float().div(255)
    y = targets.to(images.device).float().div(255)
    try:
        scores = paired_scores(x, y, y_channel=source.y_channel, border=source.border)
    except ValueError as exc:  # the border crop leaves nothing of these images
        raise BadInput(f"PSNR/SSIM: {exc}", "Evaluate on larger images.") from None
    for key, value in scores.items():
        out.setdefault(key, []).append(value.cpu())


def _paired_quality(batches: Callable, source: ImageSource, batch_size: int) -> dict[str, float]:
    vals: dict[str, list[Tensor]] = {}
    done = 0
    for batch in batches(batch_size):
        images = to_uint8(batch)[: source.count - done]
        _compare(images, source.real[done : done + len(images)], vals, source)
        done += len(images)
        if done >= source.count:
            break
    return {k: float(torch.cat(v).mean()) for k, v in vals.items()}


# ---------------------------------------------------------------- real features, cached

# The last real set of this process: evaluations during training do not reload it.
_REAL_MEMO: dict[str, dict[str, Any]] = {}


def content_fingerprint(images: Tensor | StreamedImages, batch_size: int = 256) -> str:
    """sha256 of a uint8 image tensor's shape and bytes: the same images, the same fingerprint.
    Streamed images are hashed a batch at a time, to the fingerprint of their tensor."""
    h = hashlib.sha256(str(tuple(images.shape)).encode())
    if isinstance(images, Tensor):
        h.update(images.contiguous().numpy().tobytes())
        return h.hexdigest()
    for start in range(0, len(images), batch_size):
        h.update(images[start : start + batch_size].contiguous().numpy().tobytes())
    return h.hexdigest()


def _real_features(source, extractor, weights, device, batch_size, progress) -> tuple[dict, str]:
    """Pool3 features and FID statistics of the real images, from the cache when there."""
    from genctl.data import cache
    from genctl.evaluation import fidelity

    fingerprint = content_fingerprint(source.real, batch_size)
    protocol = {
        "format": CACHE_FORMAT,
        "real": fingerprint,
        "extractor": fidelity.FEATURE_EXTRACTOR,
        "weights": weights.sha256,
        "layer": fidelity.feature_layer("fid"),
        "input_size": fidelity.INPUT_SIZE,
        "torch_fidelity": fidelity.VERSION,
    }
    key = hashlib.sha256(json.dumps(protocol, sort_keys=True).encode()).hexdigest()[:24]
    name = f"eval-real-{key}"
    path = cache.cache_dir() / f"{name}.pt"
    what = f"real-image statistics of {source.real_name}"
    if key in _REAL_MEMO:
        return _REAL_MEMO[key], f"{what}: from cache {path}"
    payload = cache.load(name)
    if payload is not None:
        note = f"{what}: from cache {path}"
    else:
        layer = fidelity.feature_layer("fid")
        chunks = []
        with _bar(len(source.real), "real images: features", progress) as bar:
            for start in range(0, len(source.real), batch_size):
                batch = source.real[start : start + batch_size]
                chunks.append(_extract(extractor, batch, device)[layer])
                bar.update(len(batch))
        features = torch.cat(chunks)
        payload = {
            "features": features,
            "stats": fidelity.fid_statistics(features),
            "fingerprint": fingerprint[:16],
            "protocol": {k: str(v) for k, v in protocol.items()},
        }
        saved = cache.save(name, payload)
        note = f"{what}: computed" + (f", cached at {saved}" if saved else " (cache not writable)")
    _REAL_MEMO.clear()  # keep one real set: features of 50k images are 400 MB
    _REAL_MEMO[key] = payload
    return payload, note


# ---------------------------------------------------------------- during training


def check_ready(recipe: Any) -> None:
    """Fail before training starts, not at the first evaluation, when evaluation cannot run:
    Inception weights missing offline, PSNR/SSIM asked of a model without paired targets, a
    likelihood asked of a model without one, or an ``evaluate.best`` metric that no evaluation
    reports."""
    cfg = recipe.evaluate
    wanted = parse_metrics(cfg.metrics)
    if "nll" in wanted:
        _check_likelihood(recipe)
    if "accuracy" in wanted:
        _check_classifier(recipe)
    if "auroc" in wanted:
        _check_anomaly(recipe)
    if any(m in DOMAIN_METRICS for m in wanted):
        if not cfg.feature_extractor:
            raise BadInput(
                "evaluate.metrics: fid_domain and kid_domain need evaluate.feature_extractor",
                "Set evaluate.feature_extractor: RUN_ID (or a checkpoint path) of a classifier "
                "trained on this data (genctl train recipes/classifier.yaml).",
            )
        from genctl.classifiers import load_classifier

        load_classifier(cfg.feature_extractor)  # a wrong run id fails now, not at step N
    elif cfg.feature_extractor:
        raise BadInput(
            "evaluate.feature_extractor is set but evaluate.metrics asks for no domain metric",
            "Add fid_domain and/or kid_domain to evaluate.metrics (the Inception fid/kid stay "
            "as they are), or drop evaluate.feature_extractor.",
        )
    if any(m in PAIRED_METRICS for m in wanted) and recipe.spec.task not in PAIRED_TASKS:
        raise BadInput(
            f"evaluate.metrics: PSNR and SSIM need paired targets; {recipe.plugin} is a "
            f"{recipe.spec.task} model",
            "Use fid, kid, isc or prc for it (paired and super-resolution models get PSNR/SSIM).",
        )
    if cfg.best:
        names = [k for m in wanted for k in RESULT_KEYS[m]]
        if "auroc" in wanted and cfg.best.startswith(("auroc_", "auprc_")):
            names.append(cfg.best)  # the kinds are the sampler's: a wrong one fails at step N
        if recipe.spec.task in PAIRED_TASKS:  # always measured for paired outputs
            names += [k for k in ("psnr", "ssim") if k not in names]
        if recipe.spec.task == "super_resolution":  # Y channel, RGB beside
            names += ["psnr_rgb", "ssim_rgb"]
        if cfg.best not in names:
            raise BadInput(
                f"evaluate.best: {cfg.best!r} is not measured; evaluate.metrics gives: {', '.join(names)}",
                "Pick one of those, or add its metric to evaluate.metrics.",
            )
    if any(m in INCEPTION_METRICS for m in wanted):
        from genctl.evaluation import fidelity

        fidelity.resolve_weights(cfg.feature_extractor_weights)


def _check_capability(recipe: Any, has: Callable[[Any], bool], message: str, hint: str) -> None:
    """A test-split metric needs a sampler with a capability (``has``): bad input before training
    when the sampler's class lacks it. A sampler made by a function is known only once built;
    :func:`evaluate` checks it then."""
    spec = recipe.spec
    known = not isinstance(spec.sampler, type) or has(spec.sampler)
    if spec.task not in ("unconditional", "conditional") or not known:
        raise BadInput(message, hint)


def _check_likelihood(recipe: Any) -> None:
    _check_capability(
        recipe,
        lambda s: all(callable(getattr(s, m, None)) for m in ("nll", "nll_protocol")),
        f"evaluate.metrics: nll is the likelihood of test images under the model; "
        f"{recipe.plugin} reports none",
        "Use fid, kid, isc or prc for it (nll applies to likelihood models, whose sampler "
        "has nll(); see docs/plugins.md).",
    )


def _check_anomaly(recipe: Any) -> None:
    from genctl.evaluation.anomaly import supports

    _check_capability(
        recipe,
        supports,
        f"evaluate.metrics: auroc ranks images by the model's anomaly scores; {recipe.plugin} "
        "gives none",
        "auroc applies to models whose sampler has anomaly_scores() (see docs/plugins.md).",
    )
    if not recipe.evaluate.anomaly_classes:
        raise BadInput(
            "evaluate.metrics: auroc needs evaluate.anomaly_classes, the classes that are anomalies",
            "Set evaluate.anomaly_classes: [CLASS, ...] and train without them "
            "(data.exclude_classes: [CLASS, ...]).",
        )


def _check_classifier(recipe: Any) -> None:
    from genctl.classifiers import is_classifier

    _check_capability(
        recipe,
        is_classifier,
        f"evaluate.metrics: accuracy scores a classifier; {recipe.plugin} does not classify",
        "accuracy applies to classifiers (the classifier family, or a model whose sampler "
        "has classify() and features()); use fid, kid, isc or prc here.",
    )


def evaluate_in_training(
    recipe: Any,
    spec: Any,
    nets: dict[str, torch.nn.Module],
    sampler: Any,
    step: int,
    device: torch.device | str,
    tracker: Any = None,
) -> dict[str, float]:
    """The recipe's ``evaluate:`` metrics at ``step``, names without the ``eval/`` prefix.

    The trainer passes the networks in eval mode (EMA ones when the run keeps them) and logs the
    result. With ``tracker`` (a :class:`genctl.tracking.Tracker`), the protocol is recorded on the
    run as tags. Generation uses the recipe's seed, so evaluations at different steps compare.
    """
    from genctl import interrupts

    cfg = recipe.evaluate
    with interrupts.abandonable():  # Ctrl-C / SIGTERM abandon the evaluation, not the run
        source = source_for(
            recipe,
            sampler,
            device=device,
            num_samples=cfg.num_samples,
            seed=recipe.train.seed,
            num_real=cfg.num_real,
        )
        result = evaluate(
            source,
            cfg.metrics,
            weights=cfg.feature_extractor_weights,
            device=device,
            batch_size=cfg.batch_size,
            progress=True,
            feature_extractor=cfg.feature_extractor,
        )
    if tracker is not None:
        record(tracker, result, step)
    for note in result.notes:
        tqdm.write(f"evaluation at step {step}: {note}")
    return result.metrics


def record(tracker: Any, result: Evaluation, step: int, *, on_demand: bool = False) -> None:
    """Record an evaluation on an MLflow run via ``tracker`` (a :class:`genctl.tracking.Tracker`).

    The protocol goes in tags (the latest evaluation's), and every evaluation's numbers, protocol
    and notes in ``evaluation/step-<step>.json``, so a number never loses how it was made.
    ``on_demand`` (``genctl evaluate``): also log the metrics (the trainer logs its own), and
    stamp the file with the time, so it never replaces the training-time file of that step.
    """
    name = f"step-{step:08d}"
    if on_demand:
        tracker.log_metrics(result.logged(), step)
        name += time.strftime("-evaluate-%Y%m%dT%H%M%S")
    tracker.set_tags(result.protocol)
    blob = json.dumps(
        {
            "step": step,
            "metrics": result.logged(),
            "protocol": result.protocol,
            "notes": result.notes,
        },
        indent=2,
    )
    tracker.write_artifact(f"evaluation/{name}.json", lambda p: p.write_text(blob))
