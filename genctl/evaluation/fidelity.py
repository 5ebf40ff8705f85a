"""Everything that touches torch-fidelity: the Inception weights, the feature extractor, the math.

This is the only module of genctl that imports ``torch_fidelity``. genctl runs torch-fidelity's
own feature extractor (``inception-v3-compat``, the TF-compatible Inception-v3 of the FID paper)
and its own metric functions; what genctl adds is where the images come from, the cache of real
statistics and the record of the protocol.

Weights, in order: the recipe's ``evaluate.feature_extractor_weights``, the environment variable
``GENCTL_INCEPTION_WEIGHTS``, the file torch-fidelity downloads into the torch hub cache, and
finally a download of that file. Offline with none of these, evaluation is bad input (exit 2)
whose message says what to set.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
import torch_fidelity
import torch_fidelity.feature_extractor_inceptionv3 as _inception_module
from torch import Tensor
from torch_fidelity import FeatureExtractorInceptionV3
from torch_fidelity.metric_fid import (
    KEY_METRIC_FID,
    fid_features_to_statistics,
    fid_statistics_to_metric,
)
from torch_fidelity.metric_isc import (
    KEY_METRIC_ISC_MEAN,
    KEY_METRIC_ISC_STD,
    isc_features_to_metric,
)
from torch_fidelity.metric_kid import (
    KEY_METRIC_KID_MEAN,
    KEY_METRIC_KID_STD,
    kid_features_to_metric,
)
from torch_fidelity.metric_prc import (
    KEY_METRIC_PRECISION,
    KEY_METRIC_RECALL,
    prc_features_to_metric,
)
from torch_fidelity.utils import create_feature_extractor
from tqdm import tqdm

from genctl.errors import BadInput

FEATURE_EXTRACTOR = "inception-v3-compat"
INPUT_SIZE: int = FeatureExtractorInceptionV3.INPUT_IMAGE_SIZE  # every image is resized to this
INCEPTION_URL: str = _inception_module.URL_INCEPTION_V3
INCEPTION_FILE = INCEPTION_URL.rsplit("/", 1)[-1]
WEIGHTS_ENV = "GENCTL_INCEPTION_WEIGHTS"
OFFLINE_ENV = "GENCTL_OFFLINE"  # set to 1 to never try a download
VERSION: str = torch_fidelity.__version__

# torch-fidelity's defaults, kept so that genctl's numbers equal torch-fidelity's on the same images.
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
ISC_SPLITS = 10
PRC_NEIGHBORHOOD = 3
RNG_SEED = 2020  # torch-fidelity's seed for KID subsets and the IS shuffle


def feature_layer(metric: str) -> str:
    """The Inception layer a metric reads: ``2048`` (pool3) for FID/KID/PRC, logits for IS."""
    return FeatureExtractorInceptionV3.get_default_feature_layer_for_metric(metric)


# ---------------------------------------------------------------- weights


@dataclass(frozen=True)
class Weights:
    """The Inception weights file in use, and how it was found."""

    path: Path
    sha256: str
    source: str  # "recipe", "environment", "torch hub cache" or "downloaded"


def resolve_weights(configured: str | None = None) -> Weights:
    """Find the Inception weights (see the module docstring for the order)."""
    if configured:
        return _local_weights(configured, "recipe", "evaluate.feature_extractor_weights")
    if os.environ.get(WEIGHTS_ENV):
        return _local_weights(os.environ[WEIGHTS_ENV], "environment", WEIGHTS_ENV)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if cached.is_file():
        return Weights(cached, file_sha256(cached), "torch hub cache")
    reason = f"{OFFLINE_ENV} is set"
    if not os.environ.get(OFFLINE_ENV):
        try:
            _download(INCEPTION_URL, cached)
            return Weights(cached, file_sha256(cached), "downloaded")
        except OSError as exc:  # URLError, timeouts, a read-only cache
            reason = f"the download failed ({exc})"
    raise BadInput(
        f"FID/IS/KID need torch-fidelity's Inception-v3 weights ({INCEPTION_FILE}) and none are "
        f"available: {reason}",
        f"Set evaluate.feature_extractor_weights: /path/to/{INCEPTION_FILE} in the recipe (or the "
        f"override evaluate.feature_extractor_weights=PATH), or the environment variable "
        f"{WEIGHTS_ENV}=PATH. The file is at {INCEPTION_URL}.",
    )


def _local_weights(path: str, source: str, where: str) -> Weights:
    p = Path(path).expanduser()
    if not p.is_file():
        raise BadInput(
            f"{where}: Inception weights file {str(path)!r} not found",
            f"Point {where} at a local copy of {INCEPTION_FILE} (from {INCEPTION_URL}).",
        )
    return Weights(p.resolve(), file_sha256(p), source)


def _download(url: str, dst: Path) -> None:
    """Download ``url`` to ``dst`` atomically, with a progress bar."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(url, timeout=30) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        with (
            tempfile.NamedTemporaryFile(dir=dst.parent, delete=False) as tmp,
            tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {dst.name}") as bar,
        ):
            while chunk := response.read(1 << 20):
                tmp.write(chunk)
                bar.update(len(chunk))
    os.replace(tmp.name, dst)


_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) so repeated evaluations hash once."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_MEMO:
        h = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
        _SHA_MEMO[key] = h.hexdigest()
    return _SHA_MEMO[key]


def write_standin_weights(path: str | Path, seed: int = 0) -> Path:
    """Write a stand-in Inception weights file: the real layout, random values.

    For tests, benchmarks and offline smoke runs: the whole real code path runs, but the numbers
    mean nothing. Convolutions get He-normal weights so that features keep a useful scale.
    """
    from unittest import mock

    # torch-fidelity's constructor always loads weights; build the bare architecture instead.
    with (
        mock.patch.object(_inception_module, "load_state_dict_from_url", lambda *a, **k: None),
        mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict", lambda *a, **k: None),
    ):
        model = FeatureExtractorInceptionV3(FEATURE_EXTRACTOR, ["2048"])
    state = model.state_dict()
    g = torch.Generator().manual_seed(seed)
    for name, value in state.items():
        if name.endswith("conv.weight"):
            fan_in = value[0].numel()
            value.copy_(torch.randn(value.shape, generator=g) * (2.0 / fan_in) ** 0.5)
        elif name == "fc.weight":
            value.copy_(torch.randn(value.shape, generator=g) * (1.0 / value.shape[1]) ** 0.5)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


# ---------------------------------------------------------------- the feature extractor


def feature_extractor(
    weights: Weights, layers: Sequence[str], device: str | torch.device
) -> torch.nn.Module:
    """torch-fidelity's Inception-v3 with ``weights``, giving ``layers``, on ``device`` (memoised)."""
    return _feature_extractor(weights, tuple(sorted(layers)), str(torch.device(device)))


@lru_cache(maxsize=2)
def _feature_extractor(weights: Weights, layers: tuple[str, ...], device: str) -> torch.nn.Module:
    # torch-fidelity loads the file with weights_only=False; check it holds only tensors first.
    try:
        state = torch.load(weights.path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BadInput(
            f"Inception weights {str(weights.path)!r} cannot be read as a PyTorch weights file: "
            f"{str(exc).splitlines()[0]}",
            f"Use torch-fidelity's {INCEPTION_FILE} (from {INCEPTION_URL}).",
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise BadInput(f"Inception weights {str(weights.path)!r} are not a state dict of tensors")
    del state
    try:
        extractor = create_feature_extractor(
            FEATURE_EXTRACTOR,
            list(layers),
            cuda=False,
            feature_extractor_weights_path=str(weights.path),
            verbose=False,
        )
    except RuntimeError as exc:  # load_state_dict: missing keys or wrong shapes
        raise BadInput(
            f"{str(weights.path)!r} does not hold Inception-v3 weights in torch-fidelity's layout: "
            f"{str(exc).splitlines()[0]}",
            f"Use torch-fidelity's {INCEPTION_FILE} (from {INCEPTION_URL}).",
        ) from None
    return extractor.to(device)


def extract(extractor: torch.nn.Module, images: Tensor) -> dict[str, Tensor]:
    """Features of a uint8 batch N x 3 x H x W (already on the extractor's device), on the CPU."""
    with torch.no_grad():
        features = extractor(images)
    named = extractor.convert_features_tuple_to_dict(features)
    return {name: value.cpu() for name, value in named.items()}


# ---------------------------------------------------------------- the metric math (torch-fidelity's)
# Argument order as in torch-fidelity's calculate_metrics: input1 = generated, input2 = real.


def fid_statistics(features: Tensor) -> dict[str, Tensor]:
    """Mean and covariance of pool3 features, as tensors (so the cache loads with weights_only)."""
    stats = fid_features_to_statistics(features)
    return {"mu": torch.from_numpy(stats["mu"]), "sigma": torch.from_numpy(stats["sigma"])}


def fid(generated: dict[str, Tensor], real: dict[str, Tensor]) -> float:
    to_np = {k: v.numpy() for k, v in generated.items()}, {k: v.numpy() for k, v in real.items()}
    return float(fid_statistics_to_metric(*to_np, verbose=False)[KEY_METRIC_FID])


def kid(generated: Tensor, real: Tensor, subset_size: int) -> tuple[float, float]:
    out = kid_features_to_metric(
        generated,
        real,
        kid_subsets=KID_SUBSETS,
        kid_subset_size=subset_size,
        rng_seed=RNG_SEED,
        verbose=False,
    )
    return out[KEY_METRIC_KID_MEAN], out[KEY_METRIC_KID_STD]


def inception_score(logits: Tensor, splits: int) -> tuple[float, float]:
    out = isc_features_to_metric(logits, splits=splits, shuffle=True, rng_seed=RNG_SEED)
    return out[KEY_METRIC_ISC_MEAN], out[KEY_METRIC_ISC_STD]


def precision_recall(generated: Tensor, real: Tensor) -> tuple[float, float]:
    out = prc_features_to_metric(
        generated, real, prc_neighborhood=PRC_NEIGHBORHOOD, save_cpu_ram=False, verbose=False
    )
    return out[KEY_METRIC_PRECISION], out[KEY_METRIC_RECALL]
