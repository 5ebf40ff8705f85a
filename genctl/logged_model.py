"""The final model as MLflow serves it: images from ``{n, seed, options}`` (and input images).

A run's logged model (``genctl.tracking.log_model``) is an MLflow pyfunc written as *code*, not
as a pickle: its ``load_context`` reads genctl's own checkpoint with ``torch.load(weights_only=
True)`` and rebuilds the networks through the installed family plugin; its ``predict`` calls
:meth:`ImageModel.predict` here. This module imports no mlflow, so the same inference is used
and tested without it.

A request is a mapping (a one-row table from ``mlflow models serve`` works too)::

    {"n": 16, "seed": 0, "options": {"truncation": 0.7}}     # a generator
    {"images": [H x W x C uint8, ...], "seed": 0}              # a translation model

and the answer an ``N x H x W x C`` uint8 array: image ``i`` of seed ``s`` is the image
``genctl sample --seed s`` draws as image ``i``, whatever ``n``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genctl.errors import BadInput

MAX_IMAGES = 4096  # one request: more is a job for `genctl sample`


class ImageModel:
    """A trained genctl model, ready to draw images for requests."""

    def __init__(self, model):
        self.model = model  # genctl.resolve.LoadedModel

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device | None = None) -> ImageModel:
        """The model in genctl checkpoint ``path`` (loaded with ``weights_only=True``)."""
        from genctl.resolve import load_model

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return cls(load_model(Path(path), torch.device(device)))

    def predict(self, request: Any) -> np.ndarray:
        """``N x H x W x C`` uint8 images for ``request`` (see the module's docstring)."""
        from genctl.sampling import default_batch_size
        from genctl.spec import draw, draw_each, image_seed

        req = _as_mapping(request)
        unknown = sorted(set(req) - {"n", "seed", "options", "images"})
        if unknown:
            raise BadInput(
                f"unknown request keys {unknown}", "A request has n, seed, options and images."
            )
        m = self.model
        seed = _integer(req.get("seed", 0), "seed")
        opts = _options(m.spec, req.get("options"))
        images = req.get("images")
        if images is not None and not _empty(images):
            inputs = _inputs(images, m.info).to(_device(m))
            with torch.no_grad():
                out = m.sampler.sample(
                    len(inputs), opts, torch.Generator().manual_seed(seed), inputs=inputs
                )
            return _uint8(out)
        if m.spec.takes_input:
            raise BadInput(
                f"{m.spec.name} translates images: give them as images (N x H x W x C uint8)"
            )
        n = _integer(req.get("n", 1), "n")
        if not 1 <= n <= MAX_IMAGES:
            raise BadInput(f"n={n} is out of range", f"Ask for 1 to {MAX_IMAGES} images.")
        with torch.no_grad():
            if hasattr(m.sampler, "nrow"):  # the sampler lays out a grid of its own: one call
                return _uint8(draw(m.sampler, n, opts, torch.Generator().manual_seed(seed)))
            batch = default_batch_size(m.info.image_size)
            parts = []
            for start in range(0, n, batch):
                idx = range(start, min(start + batch, n))
                gens = [torch.Generator().manual_seed(image_seed(seed, j)) for j in idx]
                parts.append(_uint8(draw_each(m.sampler, opts, gens, idx)))
        return np.concatenate(parts)


def _as_mapping(request: Any) -> dict[str, Any]:
    """A dict from a dict, a JSON string, or a one-row table (pandas, as serving may pass)."""
    if isinstance(request, str):
        try:
            request = json.loads(request)
        except ValueError:
            raise BadInput("a request is a JSON object: {n, seed, options}") from None
    if hasattr(request, "to_dict") and hasattr(request, "columns"):  # a pandas DataFrame
        rows = request.to_dict(orient="records")
        if len(rows) != 1:
            raise BadInput(f"a request table has one row, not {len(rows)}")
        request = rows[0]
    if isinstance(request, list) and len(request) == 1 and isinstance(request[0], Mapping):
        request = request[0]
    if not isinstance(request, Mapping):
        raise BadInput(f"a request is a mapping {{n, seed, options}}, not {type(request).__name__}")
    return {k: _scalar(v) if k in ("n", "seed") else v for k, v in request.items()}


def _scalar(v: Any) -> Any:
    """Serving wraps a scalar in a one-element list or array: unwrap it."""
    if isinstance(v, np.ndarray) and v.size == 1:
        return v.reshape(()).item()
    if isinstance(v, list | tuple) and len(v) == 1:
        return v[0]
    return v


def _integer(v: Any, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int | np.integer):
        if isinstance(v, float | np.floating) and float(v).is_integer():
            return int(v)
        raise BadInput(f"{name}={v!r} is not an integer")
    return int(v)


def _empty(images: Any) -> bool:
    return len(images) == 0 if hasattr(images, "__len__") else False


def _options(spec, options: Any):
    """The sampler's validated options from a dict (or its JSON), with the CLI's messages."""
    from genctl.sampling import parse_options

    if options is None or (isinstance(options, str) and not options.strip()):
        options = {}
    if isinstance(options, np.ndarray) and options.size == 1:
        options = options.reshape(()).item()
    if isinstance(options, str):
        try:
            options = json.loads(options)
        except ValueError:
            raise BadInput(f"options {options!r} is not a JSON object") from None
    if not isinstance(options, Mapping):
        raise BadInput(f"options is a mapping of sampler options, not {type(options).__name__}")
    return parse_options(spec, [f"{k}={json.dumps(v)}" for k, v in options.items()])


def _inputs(images: Any, info) -> torch.Tensor:
    """uint8 images (N x H x W x C, or a list of H x W x C / H x W) as the model's input:
    float [-1, 1], resized to the size it was trained on, as `genctl sample --input` reads files."""
    arrays = [np.asarray(im) for im in images] if isinstance(images, list | tuple) else images
    if isinstance(arrays, np.ndarray):
        arrays = list(arrays)
    side = info.image_size // info.scale if info.task == "super_resolution" else info.image_size
    out = []
    for i, a in enumerate(arrays):
        a = np.asarray(a)
        if a.ndim == 2:
            a = a[..., None]
        if a.ndim != 3 or a.shape[-1] not in (1, 3, 4):
            raise BadInput(f"input image {i} has shape {a.shape}; give H x W x C uint8 images")
        if a.dtype != np.uint8:
            raise BadInput(f"input image {i} is {a.dtype}; give uint8 images (0-255)")
        t = torch.from_numpy(np.ascontiguousarray(a[..., :3])).permute(2, 0, 1).float()
        if t.shape[0] != info.channels:  # grey for a grey model, RGB for a colour one
            t = t.mean(0, keepdim=True) if info.channels == 1 else t.expand(3, -1, -1)
        if t.shape[1:] != (side, side):
            t = torch.nn.functional.interpolate(
                t[None], size=(side, side), mode="bicubic", antialias=True
            )[0].clamp(0, 255)
        out.append(t.div(127.5).sub(1.0))
    if not out:
        raise BadInput("images is empty")
    return torch.stack(out)


def _device(model) -> torch.device:
    for net in model.nets.values():
        for p in net.parameters():
            return p.device
    return torch.device("cpu")


def _uint8(images: torch.Tensor) -> np.ndarray:
    """[0, 1] N x C x H x W -> N x H x W x C uint8, rounded as `genctl sample` writes PNGs."""
    x = images.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu()
    return x.permute(0, 2, 3, 1).numpy()


def requirements(spec) -> list[str]:
    """The pip requirements of ``spec``'s logged model: genctl, and the distribution of a
    third-party family plugin (the built-in ones are genctl's)."""
    from importlib.metadata import PackageNotFoundError, distribution, packages_distributions

    import genctl

    reqs = [f"genctl=={genctl.__version__}"]
    try:
        ours = {ep.name for ep in distribution("genctl").entry_points if ep.group == "genctl"}
    except PackageNotFoundError:
        ours = set()
    if spec.plugin in ours or not spec.package:
        return reqs
    for dist in sorted(set(packages_distributions().get(spec.package.split(".")[0], []))):
        try:
            reqs.append(f"{dist}=={distribution(dist).version}")
        except PackageNotFoundError:
            reqs.append(dist)
    return reqs
