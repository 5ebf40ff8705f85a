"""Sampling: validate sampler options, read input images, write images and grids.

Finding and rebuilding a trained model is :mod:`genctl.resolve`'s.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ValidationError

from genctl.errors import BadInput
from genctl.spec import DataInfo, ModelSpec

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def parse_options(spec: ModelSpec, pairs: list[str]) -> BaseModel:
    """Validate ``key=value`` sampler options against the sampler's schema."""
    import yaml

    schema = spec.sampler_options
    fields = schema.model_fields
    valid = ", ".join(f"{(f.alias or n)}" for n, f in fields.items()) or "none"
    raw: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise BadInput(
                f"sampler option {pair!r} is not key=value", f"Options of {spec.name}: {valid}."
            )
        key, _, text = pair.partition("=")
        try:
            raw[key] = yaml.safe_load(text)
        except yaml.YAMLError:
            raw[key] = text
    try:
        return schema.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                problems.append(f"unknown option {key!r}")
            else:
                problems.append(f"{key}={err.get('input')!r}: {err['msg']}")
        raise BadInput(
            f"{spec.name} sampler: {'; '.join(problems)}", f"Valid options: {valid}."
        ) from None


def options_help(spec: ModelSpec) -> str:
    """``name=default`` for each sampler option, for `genctl plugins list`."""
    parts = []
    for name, f in spec.sampler_options.model_fields.items():
        default = f.default if f.default is not None else "none"
        parts.append(f"{f.alias or name}={default}")
    return " ".join(parts) or "-"


def read_inputs(
    path: str | Path, info: DataInfo, device: torch.device
) -> tuple[torch.Tensor, list[str]]:
    """Images from a file or folder, as the model's input: float [-1, 1], resized, on ``device``."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    elif p.is_file():
        files = [p]
    else:
        raise BadInput(
            f"--input {str(path)!r} does not exist", "Give an image file or a folder of images."
        )
    if not files:
        raise BadInput(f"--input folder {p} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    side = info.image_size // info.scale if info.task == "super_resolution" else info.image_size
    mode = "L" if info.channels == 1 else "RGB"
    tensors = []
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                if im.mode in ("RGBA", "LA", "P"):
                    im = im.convert("RGBA")
                    bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                    im = Image.alpha_composite(bg, im)
                im = im.convert(mode).resize((side, side), Image.BICUBIC)
        except (UnidentifiedImageError, OSError) as exc:
            raise BadInput(
                f"cannot read input image {f}: {exc}", "Remove or replace the file."
            ) from None
        t = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(
            side, side, info.channels
        )
        tensors.append(t.permute(2, 0, 1))
    batch = torch.stack(tensors).float().div(127.5).sub(1.0)
    return batch.to(device), [f.stem for f in files]


def grid_image(images: torch.Tensor, nrow: int):
    """A grid of [0, 1] images as an H x W x C uint8 numpy array (what MLflow logs)."""
    from torchvision.utils import make_grid

    grid = make_grid(
        images.detach().float().clamp(0, 1).cpu(), nrow=max(1, nrow), padding=2, pad_value=1.0
    )
    return grid.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()


MAX_GRID_PIXELS = 2**26  # a grid larger than 8192 x 8192 is no picture to look at: use a folder


def default_batch_size(image_size: int) -> int:
    """Images per sampler call when ``--batch-size`` is not given: about a million output
    pixels a batch (256 at 32 and 64 px, 16 at 256 px, 1 at 1024 px), at most 256."""
    return max(1, min(256, 2**20 // max(1, image_size) ** 2))


def check_grid(out: Path, n: int, image_size: int) -> None:
    """A grid ``out`` of ``n`` images is kept in memory until written: refuse one too large."""
    if out.suffix.lower() in IMAGE_SUFFIXES and n * image_size**2 > MAX_GRID_PIXELS:
        raise BadInput(
            f"a grid of {n} images of {image_size}x{image_size} is too large for one picture "
            f"({MAX_GRID_PIXELS // image_size**2} at most)",
            f"Give a folder (--out {out.with_suffix('')}/): it gets one file per image, written "
            "batch by batch.",
        )


class Progress:
    """Images done out of ``total``: a bar on a terminal; where the output is a log file, a line
    after the first batch, then every ``every`` seconds, and at the end."""

    def __init__(self, total: int, desc: str = "sampling", every: float = 5.0, stream=None):
        import sys
        import time

        from tqdm import tqdm

        self.total, self.desc, self.every, self.done = total, desc, every, 0
        self.stream = stream if stream is not None else sys.stderr
        self._clock = time.monotonic
        self.start = self._clock()
        self._last: float | None = None
        tty = getattr(self.stream, "isatty", lambda: False)()
        self.bar = (
            tqdm(total=total, desc=desc, unit="img", file=self.stream, dynamic_ncols=True)
            if tty
            else None
        )

    def update(self, k: int) -> None:
        self.done += k
        if self.bar is not None:
            self.bar.update(k)
            return
        now = self._clock()
        if self._last is None or now - self._last >= self.every or self.done >= self.total:
            self._last = now
            elapsed = max(now - self.start, 1e-9)
            rate = self.done / elapsed
            left = (self.total - self.done) / rate if rate > 0 else 0.0
            print(
                f"{self.desc}: {self.done}/{self.total} images ({100 * self.done / self.total:.0f}%), "
                f"{rate:.1f} img/s, {elapsed:.0f} s elapsed, ~{left:.0f} s left",
                file=self.stream,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def save_images(
    images: torch.Tensor, out: Path, nrow: int | None = None, names: list[str] | None = None
) -> list[Path]:
    """Write a grid PNG (``out`` ends in .png/.jpg) or one PNG per image into folder ``out``.

    An interrupt waits for the file being written: what is on disk is whole files.
    """
    from PIL import Image

    from genctl.interrupts import deferred

    images = images.detach().float().clamp(0, 1).cpu()
    if out.suffix.lower() in IMAGE_SUFFIXES:
        out.parent.mkdir(parents=True, exist_ok=True)
        array = grid_image(images, nrow or int(math.ceil(math.sqrt(len(images)))))
        with deferred():
            Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).save(out)
        return [out]
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(images):
        array = img.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        name = names[i] if names and i < len(names) else f"{i:05d}"
        path = out / f"{name}.png"
        with deferred():
            Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).save(path)
        paths.append(path)
    return paths
