"""``load_dataset(cfg)``: every data kind decoded once into uint8 tensors, cached on disk.

The batch keys of each kind follow :data:`genctl.spec.BATCH_KEYS`:

========================  ===========================  =====================================
kind                      task                          ``Dataset.tensors`` keys
========================  ===========================  =====================================
shapes, images, mnist,    conditional when labelled,   ``image`` (plus ``labels``)
cifar10                   else unconditional
paired                    paired                       ``input``, ``target`` (same length)
unpaired                  unpaired                     ``a``, ``b`` (lengths may differ)
super_resolution          super_resolution             ``hr`` (the Loader makes ``lr``)
========================  ===========================  =====================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from genctl.errors import BadInput
from genctl.spec import DataInfo

from . import cache, shapes, standard
from .config import DataConfig
from .decode import Decoder, decode_all, resize_tensor, to_channels
from .sources import ImageList, Source, basename, list_images, split_root


@dataclass(eq=False)
class Dataset:
    """Decoded images as uint8 N x C x H x W tensors, one per image key, and their labels."""

    tensors: dict[str, torch.Tensor]
    labels: torch.Tensor | None  # int64 [N] when labelled
    info: DataInfo
    fingerprint: str = ""  # identifies the decoded content (for caches of statistics)

    def __len__(self) -> int:
        return self.info.size


def load_dataset(cfg: DataConfig) -> Dataset:
    """Decode (or load from the cache) the dataset the recipe's ``data:`` section describes."""
    if cfg.exclude_classes and cfg.kind not in ("shapes", "images", "mnist", "cifar10"):
        raise BadInput(
            f"data.exclude_classes: data.kind={cfg.kind} has no classes to exclude",
            "Drop data.exclude_classes (it applies to shapes, images, mnist and cifar10).",
        )
    return _KINDS[cfg.kind](cfg)


# ---------------------------------------------------------------- shared plumbing


def _root(cfg: DataConfig) -> Path:
    if not cfg.root:
        raise BadInput(
            f"data.root is required for data.kind={cfg.kind}",
            "Set data.root to the dataset's folder.",
        )
    return Path(cfg.root).expanduser()


def _settings(cfg: DataConfig, *extra: str) -> dict[str, Any]:
    """The settings that change the decoded result (they key the cache)."""
    keys = ("kind", "split", "image_size", "channels", "limit", "labels", *extra)
    return {k: getattr(cfg, k) for k in keys}


def _cached(
    cfg: DataConfig, stamp: Any, settings: dict, make: Callable[[], dict]
) -> tuple[dict, str]:
    """``make()`` the payload, or load it from the cache under the fingerprint of its inputs."""
    fp = cache.fingerprint(stamp, settings)
    name = f"{cfg.kind}-{cfg.split}-{fp}"
    if cfg.cache:
        hit = cache.load(name)
        if hit is not None:
            return hit, fp
    payload = make()
    if cfg.cache:
        cache.save(name, payload)
    return payload, fp


def _image_task(labels: torch.Tensor | None) -> str:
    return "conditional" if labels is not None else "unconditional"


def _decode_list(cfg: DataConfig, il: ImageList, halves: bool = False) -> list[torch.Tensor]:
    dec = Decoder(cfg.image_size, cfg.channels, cfg.resize, cfg.background, halves=halves)
    desc = f"decoding {il.source.path.name}"
    return decode_all(il.source, il.files, dec, outputs=2 if halves else 1, desc=desc)


def _labelled(cfg: DataConfig, payload: dict, fp: str) -> Dataset:
    """An image dataset from a payload of ``image``, ``labels`` and ``class_names``."""
    images = payload["tensors"]["image"]
    labels = payload["labels"] if cfg.labels else None
    if cfg.exclude_classes:
        images, labels, fp = _excluded(cfg, payload, fp)
    names = tuple(payload["class_names"]) if labels is not None else ()
    info = DataInfo(
        task=_image_task(labels),
        channels=cfg.channels,
        image_size=cfg.image_size,
        num_classes=len(names),
        class_names=names,
        size=len(images),
    )
    return Dataset({"image": images}, labels, info, fp)


def _excluded(cfg: DataConfig, payload: dict, fp: str) -> tuple[torch.Tensor, Any, str]:
    """The payload without the images of ``cfg.exclude_classes`` (in memory: the cache keeps
    every class), its labels (None when ``cfg.labels`` is off) and its fingerprint, which
    records the classes dropped."""
    names, all_labels = payload["class_names"], payload["labels"]
    if all_labels is None or not names:
        raise BadInput(
            f"data.exclude_classes: data.kind={cfg.kind} at this root has no class labels",
            "Exclude classes of labelled data only (class sub-folders, mnist, cifar10, shapes).",
        )
    wrong = [c for c in cfg.exclude_classes if not 0 <= c < len(names)]
    if wrong:
        raise BadInput(
            f"data.exclude_classes: {wrong} not among the class indices 0..{len(names) - 1}",
            "Classes: " + ", ".join(f"{i}={n}" for i, n in enumerate(names)) + ".",
        )
    classes = sorted(set(cfg.exclude_classes))
    if len(classes) == len(names):
        raise BadInput("data.exclude_classes excludes every class: no image is left")
    keep = ~torch.isin(all_labels, torch.tensor(classes, dtype=all_labels.dtype))
    labels = all_labels[keep] if cfg.labels else None
    return payload["tensors"]["image"][keep], labels, cache.fingerprint(fp, {"exclude": classes})


# ---------------------------------------------------------------- image kinds


def _shapes(cfg: DataConfig) -> Dataset:
    def make() -> dict:
        n = min(cfg.size, cfg.limit or cfg.size)
        images, labels = shapes.generate(
            n, cfg.image_size, split=cfg.split, background=cfg.background, channels=cfg.channels
        )
        return {
            "tensors": {"image": images},
            "labels": labels,
            "class_names": list(shapes.CLASS_NAMES),
        }

    payload, fp = _cached(cfg, "generated", _settings(cfg, "size", "background"), make)
    return _labelled(cfg, payload, fp)


def _folder_payload(cfg: DataConfig, root: Path, *, labels: bool) -> tuple[dict, str]:
    """Decoded images (and class labels) of a folder or zip, from the cache when unchanged."""

    def listed(source: Source) -> ImageList:
        return list_images(source, split_root(source, cfg.split), labels=labels, limit=cfg.limit)

    def make(il: ImageList) -> dict:
        (images,) = _decode_list(cfg, il)
        lab = torch.tensor(il.labels, dtype=torch.int64) if il.labels is not None else None
        return {"tensors": {"image": images}, "labels": lab, "class_names": list(il.class_names)}

    settings = _settings(cfg, "resize", "background")
    if root.is_file():  # a zip: its size and mtime stand for its contents, no listing needed
        return _cached(cfg, _file_stamp([root]), settings, lambda: make(listed(Source(root))))
    il = listed(Source(root))
    return _cached(cfg, il.source.stamp(il.files), settings, lambda: make(il))


def _file_stamp(paths: list[Path]) -> list:
    stats = [(p, p.stat()) for p in paths]
    return [[p.name, st.st_size, st.st_mtime_ns] for p, st in stats]


def _images(cfg: DataConfig) -> Dataset:
    payload, fp = _folder_payload(cfg, _root(cfg), labels=cfg.labels)
    return _labelled(cfg, payload, fp)


def _from_arrays(cfg: DataConfig, load: Callable, files: list[Path], names) -> Dataset:
    """MNIST / CIFAR batches: arrays already decoded; resized and converted once, cached."""

    def make() -> dict:
        images, labels, _ = load()
        if cfg.limit:
            images, labels = images[: cfg.limit], labels[: cfg.limit]
        images = to_channels(resize_tensor(images, cfg.image_size), cfg.channels)
        return {"tensors": {"image": images}, "labels": labels, "class_names": list(names)}

    payload, fp = _cached(cfg, _file_stamp(files), _settings(cfg), make)
    return _labelled(cfg, payload, fp)


def _mnist(cfg: DataConfig) -> Dataset:
    root = _root(cfg)
    files = standard.mnist_files(root, cfg.split, cfg.download)
    return _from_arrays(
        cfg, lambda: standard.load_mnist(root, cfg.split, False), files, standard.MNIST_CLASSES
    )


def _cifar10(cfg: DataConfig) -> Dataset:
    root = _root(cfg)
    batches = standard.cifar_batches(root)
    archive = standard.cifar_archive(root, cfg.split) if batches is None else None
    if batches is None and archive is None:
        if not cfg.download:
            raise standard.cifar_missing(root, cfg.split)
        standard.download_cifar(root, cfg.split)
        batches = standard.cifar_batches(root)
    if batches is not None:
        files = sorted(p for p in batches.iterdir() if p.is_file())
        load = lambda: standard.load_cifar_batches(batches, cfg.split)  # noqa: E731
        return _from_arrays(cfg, load, files, standard.CIFAR10_CLASSES)
    payload, fp = _folder_payload(cfg, archive, labels=cfg.labels)
    return _labelled(cfg, payload, fp)


# ---------------------------------------------------------------- two-image kinds


def _descend(source: Source, prefix: str, stop: set[str]) -> str:
    """Skip wrapper folders (one sub-folder, no images) until one named in ``stop`` shows."""
    while True:
        dirs, files = source.children(prefix)
        if files or len(dirs) != 1 or basename(dirs[0]) in stop:
            return prefix
        prefix = dirs[0]


def _join(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


def _paired_layout(cfg: DataConfig, source: Source) -> tuple[str, str | None]:
    """(folder of AB images, None) or (folder holding A/ and B/, "ab-folders")."""
    top = _descend(source, "", {cfg.split, "A", "B"})
    dirs = {basename(d) for d in source.children(top)[0]}
    if cfg.split in dirs:
        base = _join(top, cfg.split)
    elif cfg.split == "train" and {"A", "B"} <= dirs:
        base = top
    else:
        raise BadInput(
            f"data.root: no {cfg.split}/ folder in {source.where(top)} (found: {', '.join(sorted(dirs)) or 'nothing'})",
            f"Expected {cfg.split}/ holding side-by-side AB images (each twice as wide as high), "
            f"or {cfg.split}/A/ and {cfg.split}/B/ (or A/ and B/) with matching file names.",
        )
    sub = {basename(d) for d in source.children(base)[0]}
    return base, ("ab-folders" if {"A", "B"} <= sub else None)


def _stem(rel: str) -> str:
    return rel.rsplit("/", 1)[-1].rsplit(".", 1)[0]


def _match_pairs(source: Source, base: str, limit: int | None) -> tuple[list[str], list[str]]:
    a_files = {_stem(f): f for f in source.under(_join(base, "A"))}
    b_files = {_stem(f): f for f in source.under(_join(base, "B"))}
    only_a, only_b = sorted(a_files.keys() - b_files), sorted(b_files.keys() - a_files)
    if only_a or only_b:
        parts = []
        if only_a:
            parts.append(
                f"{len(only_a)} in A/ without a partner in B/ (e.g. {', '.join(only_a[:3])})"
            )
        if only_b:
            parts.append(
                f"{len(only_b)} in B/ without a partner in A/ (e.g. {', '.join(only_b[:3])})"
            )
        raise BadInput(
            f"data.root: file names in {source.where(_join(base, 'A'))} and B/ do not match: "
            + "; ".join(parts),
            "Each image in A/ needs one with the same name (extension aside) in B/.",
        )
    names = sorted(a_files)[:limit] if limit else sorted(a_files)
    if not names:
        raise BadInput(
            f"data.root: no images in {source.where(_join(base, 'A'))}",
            "Expected image files in A/ and B/.",
        )
    return [a_files[n] for n in names], [b_files[n] for n in names]


def _two_keys(cfg: DataConfig, a: torch.Tensor, b: torch.Tensor, keys: tuple[str, str]) -> dict:
    first, second = (a, b) if cfg.direction == "a2b" else (b, a)
    return {keys[0]: first, keys[1]: second}


def _paired(cfg: DataConfig) -> Dataset:
    source = Source(_root(cfg))
    base, layout = _paired_layout(cfg, source)
    if layout == "ab-folders":
        a_files, b_files = _match_pairs(source, base, cfg.limit)
        stamp = source.stamp(a_files + b_files)

        def make() -> dict:
            (a,) = _decode_list(cfg, ImageList(source, a_files, None, ()))
            (b,) = _decode_list(cfg, ImageList(source, b_files, None, ()))
            return {"tensors": {"a": a, "b": b}}

    else:
        il = list_images(source, base, labels=False, limit=cfg.limit)
        stamp = source.stamp(il.files)

        def make() -> dict:
            a, b = _decode_list(cfg, il, halves=True)
            return {"tensors": {"a": a, "b": b}}

    payload, fp = _cached(cfg, [layout, stamp], _settings(cfg, "resize", "background"), make)
    t, fp = payload["tensors"], cache.fingerprint(fp, cfg.direction)  # keys depend on direction
    info = DataInfo("paired", cfg.channels, cfg.image_size, size=len(t["a"]))
    return Dataset(_two_keys(cfg, t["a"], t["b"], ("input", "target")), None, info, fp)


def _unpaired(cfg: DataConfig) -> Dataset:
    source = Source(_root(cfg))
    want = {f"{cfg.split}A", f"{cfg.split}B"}
    top = _descend(source, "", want)
    dirs = {basename(d) for d in source.children(top)[0]}
    if not want <= dirs:
        raise BadInput(
            f"data.root: {source.where(top)} has no {' and '.join(sorted(want - dirs))} folder "
            f"(found: {', '.join(sorted(dirs)) or 'nothing'})",
            "Expected trainA/ and trainB/ (testA/ and testB/ for data.split=test): "
            "one folder of images per domain, no pairing needed.",
        )
    lists = [
        list_images(source, _join(top, f"{cfg.split}{d}"), labels=False, limit=cfg.limit)
        for d in "AB"
    ]

    def make() -> dict:
        (a,) = _decode_list(cfg, lists[0])
        (b,) = _decode_list(cfg, lists[1])
        return {"tensors": {"a": a, "b": b}}

    stamp = [source.stamp(il.files) for il in lists]
    payload, fp = _cached(cfg, stamp, _settings(cfg, "resize", "background"), make)
    t, fp = payload["tensors"], cache.fingerprint(fp, cfg.direction)
    info = DataInfo("unpaired", cfg.channels, cfg.image_size, size=max(len(t["a"]), len(t["b"])))
    return Dataset(_two_keys(cfg, t["a"], t["b"], ("a", "b")), None, info, fp)


def _super_resolution(cfg: DataConfig) -> Dataset:
    if cfg.image_size % cfg.scale:
        raise BadInput(
            f"data.image_size={cfg.image_size} is not divisible by data.scale={cfg.scale}",
            "The low-resolution side is image_size / scale: pick a multiple of the scale.",
        )
    payload, fp = _folder_payload(cfg, _root(cfg), labels=False)
    hr = payload["tensors"]["image"]
    info = DataInfo("super_resolution", cfg.channels, cfg.image_size, size=len(hr), scale=cfg.scale)
    return Dataset({"hr": hr}, None, info, fp)


_KINDS: dict[str, Callable[[DataConfig], Dataset]] = {
    "shapes": _shapes,
    "images": _images,
    "mnist": _mnist,
    "cifar10": _cifar10,
    "paired": _paired,
    "unpaired": _unpaired,
    "super_resolution": _super_resolution,
}
