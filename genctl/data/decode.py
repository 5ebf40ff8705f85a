"""Decode image files into uint8 tensors, once, in parallel threads.

Pillow releases the GIL while it decodes and resamples, so threads use every core without
the start-up and copying cost of processes. Each image is flattened onto the background when
it has transparency, converted to RGB or grayscale, made square (``data.resize``: the centre
cropped, the whole stretched, or padded with the background colour) and resized with an
antialiasing filter (a box-filtered JPEG draft first when that is much larger).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image

from genctl.errors import BadInput

from .sources import Source

Image.MAX_IMAGE_PIXELS = None  # our own files; large scans are fine
RESAMPLE = Image.Resampling.BICUBIC


def workers() -> int:
    """Decoding threads: the cores this process may use (``GENCTL_DATA_WORKERS`` overrides)."""
    env = os.environ.get("GENCTL_DATA_WORKERS")
    if env:
        return max(1, int(env))
    try:
        return max(1, min(8, len(os.sched_getaffinity(0))))
    except AttributeError:  # not on Linux
        return max(1, min(8, os.cpu_count() or 1))


class Decoder:
    """Turns one file into uint8 C x S x S tensors (one, or two for a side-by-side AB pair)."""

    def __init__(
        self,
        image_size: int,
        channels: int,
        resize: str = "center_crop",
        background: tuple[int, int, int] = (255, 255, 255),
        halves: bool = False,
    ):
        self.size = image_size
        self.channels = channels
        self.resize = resize
        self.background = tuple(background)
        self.halves = halves  # paired AB: left half and right half, each w/2 x h

    def open(self, source: Source, rel: str) -> Image.Image:
        try:
            data = source.read(rel)
            if not data:
                raise BadInput(
                    f"cannot read image {source.where(rel)}: the file is empty (0 bytes)",
                    "Remove or replace the file (an interrupted copy or download?).",
                )
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if self.halves and w != 2 * h:
                raise BadInput(
                    f"{source.where(rel)} is {w}x{h}: a paired (side-by-side AB) image must be "
                    "twice as wide as high",
                    "Expected the input on the left half and the target on the right half; "
                    "or lay the pairs out as A/ and B/ folders with matching file names.",
                )
            # JPEG: decode at 1/2, 1/4 or 1/8 scale when the target is that much smaller.
            img.draft(img.mode, ((2 if self.halves else 1) * self.size, self.size))
            img.load()
        except BadInput:
            raise
        except Exception as exc:  # PIL raises many kinds for a damaged file
            if isinstance(exc, Image.UnidentifiedImageError):  # its text names a BytesIO object
                exc = "not an image format Pillow knows (or the start of the file is damaged)"
            raise BadInput(
                f"cannot read image {source.where(rel)}: {exc}",
                "Remove or replace the file (is it truncated or not an image?).",
            ) from None
        return img

    def to_mode(self, img: Image.Image) -> Image.Image:
        """RGB or L, transparency flattened onto the background."""
        if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
            rgba = img.convert("RGBA")
            flat = Image.new("RGB", rgba.size, self.background)
            flat.paste(rgba, mask=rgba.getchannel("A"))
            img = flat
        elif img.mode.startswith(("I", "F")):  # 16-bit / float grayscale
            arr = np.asarray(img, dtype=np.float64)
            hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
            img = Image.fromarray(np.clip(arr * (255.0 / hi), 0, 255).round().astype(np.uint8))
        want = "L" if self.channels == 1 else "RGB"
        return img if img.mode == want else img.convert(want)

    def square(self, img: Image.Image, box: tuple[int, int, int, int]) -> np.ndarray:
        """Crop, stretch or pad the region ``box`` to a square of side ``size``, as H x W x C.

        The region is cut out first, so the resampling filter sees no pixel outside it.
        """
        x0, y0, x1, y1 = box
        if self.resize == "center_crop":
            w, h = x1 - x0, y1 - y0
            m = min(w, h)
            x0, y0 = x0 + (w - m) // 2, y0 + (h - m) // 2
            x1, y1 = x0 + m, y0 + m
        region = img.crop((x0, y0, x1, y1)) if (x0, y0, x1, y1) != (0, 0, *img.size) else img
        if self.resize == "pad" and region.width != region.height:
            region = self._padded(region)
        out = region.resize((self.size, self.size), RESAMPLE)
        arr = np.asarray(out, dtype=np.uint8)
        return arr[:, :, None] if arr.ndim == 2 else arr

    def _padded(self, region: Image.Image) -> Image.Image:
        """The region centred on a square of the background colour (letterboxed)."""
        m = max(region.size)
        fill = Image.new("RGB", (1, 1), self.background).convert(region.mode).getpixel((0, 0))
        canvas = Image.new(region.mode, (m, m), fill)
        canvas.paste(region, ((m - region.width) // 2, (m - region.height) // 2))
        return canvas

    def __call__(self, source: Source, rel: str) -> list[np.ndarray]:
        img = self.to_mode(self.open(source, rel))
        w, h = img.size
        if not self.halves:
            return [self.square(img, (0, 0, w, h))]
        return [self.square(img, (0, 0, w // 2, h)), self.square(img, (w // 2, 0, w, h))]


def decode_all(
    source: Source,
    files: list[str],
    decoder: Decoder,
    *,
    outputs: int = 1,
    desc: str = "decoding",
    progress: Callable[[int], None] | None = None,
) -> list[torch.Tensor]:
    """Decode ``files`` into ``outputs`` uint8 tensors of N x C x S x S, in parallel threads."""
    n, c, s = len(files), decoder.channels, decoder.size
    outs = [torch.empty((n, c, s, s), dtype=torch.uint8) for _ in range(outputs)]
    views = [o.numpy() for o in outs]  # written in place, one row per file

    def work(lo: int, hi: int) -> int:
        for i in range(lo, hi):
            for view, arr in zip(views, decoder(source, files[i]), strict=True):
                view[i] = arr.transpose(2, 0, 1)
        return hi - lo

    chunk = 64
    bar = _bar(n, desc)
    with ThreadPoolExecutor(max_workers=workers()) as pool:
        futures = [pool.submit(work, lo, min(n, lo + chunk)) for lo in range(0, n, chunk)]
        try:
            for fut in futures:
                done = fut.result()  # re-raises BadInput naming the file
                if bar is not None:
                    bar.update(done)
        except BaseException:
            for fut in futures:  # stop the chunks not yet started; running ones finish
                fut.cancel()
            raise
        finally:
            if bar is not None:
                bar.close()
    return outs


def _bar(n: int, desc: str):
    """A progress bar for long decodes, shown only on a terminal."""
    if n < 2000:
        return None
    from tqdm import tqdm

    return tqdm(total=n, desc=desc, unit="img", leave=False, disable=None)


def resize_tensor(x: torch.Tensor, size: int, resize: str = "center_crop") -> torch.Tensor:
    """uint8 N x C x H x W -> N x C x size x size, antialiased bicubic (for array datasets)."""
    h, w = x.shape[-2:]
    if resize == "center_crop" and h != w:
        m = min(h, w)
        top, left = (h - m) // 2, (w - m) // 2
        x = x[..., top : top + m, left : left + m]
    if x.shape[-1] == size and x.shape[-2] == size:
        return x.contiguous()
    out = []
    for lo in range(0, len(x), 4096):  # bounded float memory for large sets
        f = torch.nn.functional.interpolate(
            x[lo : lo + 4096].float(), size=(size, size), mode="bicubic", antialias=True
        )
        out.append(f.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out)


def to_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 N x C x H x W with C in {1, 3} -> ``channels`` (ITU-R 601 luma for RGB -> L)."""
    if x.shape[1] == channels:
        return x
    if channels == 3:
        return x.expand(-1, 3, -1, -1).contiguous()
    weights = torch.tensor([299, 587, 114], dtype=torch.int32).view(1, 3, 1, 1)
    return (
        ((x.to(torch.int32) * weights).sum(1, keepdim=True) + 500)
        .div(1000, rounding_mode="floor")
        .to(torch.uint8)
    )
