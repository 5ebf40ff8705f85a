"""Small image files made on the spot for the data tests."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, pixels: np.ndarray, **save_args) -> Path:
    """Save an H x W x C (or H x W) uint8 array as an image file, making parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **save_args)
    return path


def noise_image(seed: int, height: int = 12, width: int = 12) -> np.ndarray:
    """A random RGB image: distinct per seed, so mix-ups show."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def zip_folder(folder: Path, archive: Path) -> Path:
    """Zip every file under ``folder``, paths relative to it."""
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())
    return archive
