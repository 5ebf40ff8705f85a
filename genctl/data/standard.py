"""MNIST and CIFAR-10 from local files, downloaded through torchvision only when asked.

MNIST: the four IDX files (gzipped or not) in ``root/MNIST/raw/`` (torchvision's layout) or
directly in ``root``. CIFAR-10: torchvision's ``cifar-10-batches-py/`` under ``root`` when
present, else ``root/train.zip`` / ``root/test.zip`` (or folders) holding one sub-folder per
class, read as an image folder (see :mod:`genctl.data.sources`).
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import torch

from genctl.errors import BadInput

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MNIST_CLASSES = tuple(str(d) for d in range(10))
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
CIFAR_BATCHES = "cifar-10-batches-py"


def _offline_hint(kind: str) -> str:
    return (
        f"Put the {kind} files there, fix data.root, or set data.download=true to fetch them "
        "(needs internet)."
    )


# ---------------------------------------------------------------- MNIST


def mnist_files(root: Path, split: str, download: bool) -> list[Path]:
    """The (images, labels) IDX files of ``split``, downloading them when asked."""
    found = _find_mnist(root, split)
    if found is None and download:
        import torchvision

        try:
            torchvision.datasets.MNIST(str(root), train=split == "train", download=True)
        except Exception as exc:
            raise BadInput(f"data.download: could not download MNIST into {root}: {exc}") from None
        found = _find_mnist(root, split)
    if found is None:
        names = ", ".join(n + ".gz" for n in MNIST_FILES[split])
        raise BadInput(
            f"MNIST {split} files not found: expected {names} in {root / 'MNIST' / 'raw'} or {root}",
            _offline_hint("MNIST"),
        )
    return found


def _find_mnist(root: Path, split: str) -> list[Path] | None:
    for folder in (root / "MNIST" / "raw", root):
        paths = []
        for name in MNIST_FILES[split]:
            hit = next(
                (folder / (name + ext) for ext in ("", ".gz") if (folder / (name + ext)).is_file()),
                None,
            )
            paths.append(hit)
        if all(paths):
            return paths
    return None


def read_idx(path: Path) -> torch.Tensor:
    """An IDX file (the MNIST format) as a uint8 tensor of its stated shape."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            data = f.read()
        zero, dtype, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype != 0x08:
            raise ValueError("not an unsigned-byte IDX file")
        shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
        body = data[4 + 4 * ndim :]
        if len(body) != int(torch.tensor(shape).prod()):
            raise ValueError(f"{len(body)} bytes of data for shape {shape}")
    except (OSError, ValueError, struct.error, EOFError) as exc:
        raise BadInput(
            f"cannot read MNIST file {path}: {exc}",
            "Replace it with the original file (or delete it and set data.download=true).",
        ) from None
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).view(*shape)


def load_mnist(
    root: Path, split: str, download: bool
) -> tuple[torch.Tensor, torch.Tensor, list[Path]]:
    """uint8 N x 1 x 28 x 28 images, int64 labels, and the files they came from."""
    img_path, lab_path = mnist_files(root, split, download)
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise BadInput(
            f"MNIST files {img_path} and {lab_path} do not match: {tuple(images.shape)} vs {tuple(labels.shape)}"
        )
    return images.unsqueeze(1), labels.long(), [img_path, lab_path]


# ---------------------------------------------------------------- CIFAR-10


def cifar_batches(root: Path) -> Path | None:
    folder = root / CIFAR_BATCHES
    return folder if folder.is_dir() else None


def cifar_archive(root: Path, split: str) -> Path | None:
    """``root/<split>.zip`` or ``root/<split>/``: the image-folder layout."""
    for path in (root / f"{split}.zip", root / split):
        if path.exists():
            return path
    return None


def download_cifar(root: Path, split: str) -> None:
    import torchvision

    try:
        torchvision.datasets.CIFAR10(str(root), train=split == "train", download=True)
    except Exception as exc:
        raise BadInput(f"data.download: could not download CIFAR-10 into {root}: {exc}") from None


def cifar_missing(root: Path, split: str) -> BadInput:
    return BadInput(
        f"CIFAR-10 {split} data not found: expected {root / CIFAR_BATCHES}/ (torchvision's "
        f"layout) or {root / (split + '.zip')} (one sub-folder per class)",
        _offline_hint("CIFAR-10"),
    )


def load_cifar_batches(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor, list[Path]]:
    """uint8 N x 3 x 32 x 32 images and int64 labels from torchvision's pickled batches."""
    import torchvision

    try:
        ds = torchvision.datasets.CIFAR10(
            str(folder.parent), train=split == "train", download=False
        )
    except Exception as exc:  # torchvision checks every batch's md5
        raise BadInput(
            f"cannot read CIFAR-10 batches in {folder}: {exc}",
            "Replace the folder with the original cifar-10-batches-py (or set data.download=true).",
        ) from None
    files = sorted(p for p in folder.iterdir() if p.is_file())
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor(ds.targets, dtype=torch.int64), files
