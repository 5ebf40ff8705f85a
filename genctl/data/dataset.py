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
from .shards import Shards, find_shards, list_samples
from .sources import ImageList, Source, basename, list_images, split_root
from .stream import Part, StreamDataset, default_workers, local_processes, should_stream


@dataclass(eq=False)
class Dataset:
    """Decoded images as uint8 N x C x H x W tensors, one per image key, and their labels."""

    tensors: dict[str, torch.Tensor]
    labels: torch.Tensor | None  # int64 [N] when labelled
    info: DataInfo
    fingerprint: str = ""  # identifies the decoded content (for caches of statistics)

    def __len__(self) -> int:
        return self.info.size

    def streams(self) -> list[tuple[tuple[str, ...], int]]:
        """Keys drawn together and their length: one stream, except unpaired domains, which
        are drawn independently."""
        if self.info.task == "unpaired":
            return [((k,), len(t)) for k, t in self.tensors.items()]
        return [(tuple(self.tensors), len(next(iter(self.tensors.values()))))]

    def take(self, indices: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The uint8 images at ``indices[s]`` of each stream ``s``, by key."""
        out = {}
        for (keys, _), idx in zip(self.streams(), indices, strict=True):
            out.update({k: self.tensors[k][idx] for k in keys})
        return out


def load_dataset(cfg: DataConfig) -> Dataset:
    """Decode (or load from the cache) the dataset the recipe's ``data:`` section describes."""
    _check_exclude(cfg)
    return _KINDS[cfg.kind](cfg)


def open_dataset(cfg: DataConfig) -> Dataset | StreamDataset:
    """The dataset to train from: decoded into memory, or streamed from its files when
    ``data.stream`` says so (or, unset, when the decoded set would not fit comfortably)."""
    _check_exclude(cfg)
    if cfg.kind in _STREAMED:
        streamed = _STREAMED[cfg.kind](cfg)
        if streamed is not None:
            return streamed
    elif cfg.stream:
        raise BadInput(
            f"data.stream: data.kind={cfg.kind} is always decoded into memory",
            "Drop data.stream, or stream image folders, zips or webdataset shards (kinds "
            "images, webdataset, paired, unpaired, super_resolution, cifar10 image zips).",
        )
    return load_dataset(cfg)


def _check_exclude(cfg: DataConfig) -> None:
    if cfg.exclude_classes and cfg.kind not in _LABELLED:
        raise BadInput(
            f"data.exclude_classes: data.kind={cfg.kind} has no classes to exclude",
            "Drop data.exclude_classes (it applies to shapes, images, webdataset, mnist and "
            "cifar10).",
        )


_LABELLED = ("shapes", "images", "webdataset", "mnist", "cifar10")


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
    all_labels = payload["labels"]
    keep, fp = _kept(cfg, payload["class_names"], all_labels, fp)
    labels = all_labels[keep] if cfg.labels else None
    return payload["tensors"]["image"][keep], labels, fp


def _kept(cfg: DataConfig, names, all_labels, fp: str) -> tuple[torch.Tensor, str]:
    """Which items ``cfg.exclude_classes`` keeps, and the fingerprint that records it."""
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
    return keep, cache.fingerprint(fp, {"exclude": classes})


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


def _folder_list(cfg: DataConfig, root: Path, *, labels: bool) -> tuple[ImageList, Any]:
    """The images of a folder or zip, and the stamp :func:`_folder_payload` keys them by."""
    source = Source(root)
    il = list_images(source, split_root(source, cfg.split), labels=labels, limit=cfg.limit)
    return il, (_file_stamp([root]) if root.is_file() else source.stamp(il.files))


def _file_stamp(paths: list[Path]) -> list:
    stats = [(p, p.stat()) for p in paths]
    return [[p.name, st.st_size, st.st_mtime_ns] for p, st in stats]


def _images(cfg: DataConfig) -> Dataset:
    payload, fp = _folder_payload(cfg, _root(cfg), labels=cfg.labels)
    return _labelled(cfg, payload, fp)


def _webdataset(cfg: DataConfig) -> Dataset:
    paths = find_shards(str(_root(cfg)), cfg.split)

    def make() -> dict:
        il = list_samples(Shards(paths), labels=cfg.labels, limit=cfg.limit)
        (images,) = _decode_list(cfg, il)
        lab = torch.tensor(il.labels, dtype=torch.int64) if il.labels is not None else None
        return {"tensors": {"image": images}, "labels": lab, "class_names": list(il.class_names)}

    # the shards' sizes and mtimes stand for their contents: a cache hit lists nothing
    stamp = _file_stamp(paths)
    payload, fp = _cached(cfg, stamp, _settings(cfg, "resize", "background"), make)
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


def _paired_files(cfg: DataConfig) -> tuple[Source, str | None, list[str], list[str] | None]:
    """The source, its layout, and the A files with their B partners (None: AB images)."""
    source = Source(_root(cfg))
    base, layout = _paired_layout(cfg, source)
    if layout == "ab-folders":
        a_files, b_files = _match_pairs(source, base, cfg.limit)
        return source, layout, a_files, b_files
    return source, layout, list_images(source, base, labels=False, limit=cfg.limit).files, None


def _paired(cfg: DataConfig) -> Dataset:
    source, layout, a_files, b_files = _paired_files(cfg)
    if b_files is not None:
        stamp = source.stamp(a_files + b_files)

        def make() -> dict:
            (a,) = _decode_list(cfg, ImageList(source, a_files, None, ()))
            (b,) = _decode_list(cfg, ImageList(source, b_files, None, ()))
            return {"tensors": {"a": a, "b": b}}

    else:
        stamp = source.stamp(a_files)

        def make() -> dict:
            a, b = _decode_list(cfg, ImageList(source, a_files, None, ()), halves=True)
            return {"tensors": {"a": a, "b": b}}

    payload, fp = _cached(cfg, [layout, stamp], _settings(cfg, "resize", "background"), make)
    t, fp = payload["tensors"], cache.fingerprint(fp, cfg.direction)  # keys depend on direction
    info = DataInfo("paired", cfg.channels, cfg.image_size, size=len(t["a"]))
    return Dataset(_two_keys(cfg, t["a"], t["b"], ("input", "target")), None, info, fp)


def _unpaired(cfg: DataConfig) -> Dataset:
    source, lists = _unpaired_lists(cfg)

    def make() -> dict:
        (a,) = _decode_list(cfg, lists[0])
        (b,) = _decode_list(cfg, lists[1])
        return {"tensors": {"a": a, "b": b}}

    stamp = [source.stamp(il.files) for il in lists]
    payload, fp = _cached(cfg, stamp, _settings(cfg, "resize", "background"), make)
    t, fp = payload["tensors"], cache.fingerprint(fp, cfg.direction)
    info = DataInfo("unpaired", cfg.channels, cfg.image_size, size=max(len(t["a"]), len(t["b"])))
    return Dataset(_two_keys(cfg, t["a"], t["b"], ("a", "b")), None, info, fp)


def _unpaired_lists(cfg: DataConfig) -> tuple[Source, list[ImageList]]:
    """The source and the image lists of domains A and B."""
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
    return source, lists


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
    "webdataset": _webdataset,
    "mnist": _mnist,
    "cifar10": _cifar10,
    "paired": _paired,
    "unpaired": _unpaired,
    "super_resolution": _super_resolution,
}


# ---------------------------------------------------------------- streamed kinds
# Each returns None when the set is decoded into memory after all (data.stream unset, small).


def _streamed(
    cfg: DataConfig, il: ImageList, stamp: Any, *, key: str = "image", task: str | None = None
) -> StreamDataset | None:
    n, side = len(il.files), cfg.image_size
    nbytes = n * cfg.channels * side * side
    if not should_stream(cfg.stream, nbytes, f"{n:,} images of {side}x{side} in {cfg.root}"):
        return None
    # the in-memory path's fingerprint: the same files and settings, the same decoded images
    fp = cache.fingerprint(stamp, _settings(cfg, "resize", "background"))
    files = list(il.files)
    all_labels = torch.tensor(il.labels, dtype=torch.int64) if il.labels is not None else None
    if cfg.exclude_classes:
        keep, fp = _kept(cfg, il.class_names, all_labels, fp)
        files = [f for f, k in zip(files, keep.tolist(), strict=True) if k]
        all_labels = all_labels[keep]  # type: ignore[index]
    labels = all_labels if cfg.labels else None
    names = tuple(il.class_names) if labels is not None else ()
    decoder = Decoder(cfg.image_size, cfg.channels, cfg.resize, cfg.background)
    info = DataInfo(
        task=task or _image_task(labels),
        channels=cfg.channels,
        image_size=cfg.image_size,
        num_classes=len(names),
        class_names=names,
        size=len(files),
        scale=cfg.scale if task == "super_resolution" else 1,
    )
    parts = [Part((key,), il.source, files, decoder)]
    return StreamDataset(parts, labels, info, fp, _workers(cfg))


def _images_streamed(cfg: DataConfig) -> StreamDataset | None:
    if cfg.stream is False:
        return None
    il, stamp = _folder_list(cfg, _root(cfg), labels=cfg.labels)
    return _streamed(cfg, il, stamp)


def _webdataset_streamed(cfg: DataConfig) -> StreamDataset | None:
    if cfg.stream is False:
        return None
    paths = find_shards(str(_root(cfg)), cfg.split)
    il = list_samples(Shards(paths), labels=cfg.labels, limit=cfg.limit)
    return _streamed(cfg, il, _file_stamp(paths))


def _cifar10_streamed(cfg: DataConfig) -> StreamDataset | None:
    root = _root(cfg)
    archive = standard.cifar_archive(root, cfg.split) if not standard.cifar_batches(root) else None
    if cfg.stream is False or archive is None:
        if cfg.stream:
            raise BadInput(
                "data.stream: CIFAR-10 from torchvision's batches is decoded into memory",
                "Drop data.stream (the batches are small), or point data.root at the image zips.",
            )
        return None
    il, stamp = _folder_list(cfg, archive, labels=cfg.labels)
    return _streamed(cfg, il, stamp)


def _super_resolution_streamed(cfg: DataConfig) -> StreamDataset | None:
    if cfg.stream is False:
        return None
    if cfg.image_size % cfg.scale:
        return None  # load_dataset says what is wrong
    il, stamp = _folder_list(cfg, _root(cfg), labels=False)
    return _streamed(cfg, il, stamp, key="hr", task="super_resolution")


def _workers(cfg: DataConfig) -> int:
    return cfg.workers if cfg.workers is not None else default_workers(local_processes())


def _paired_streamed(cfg: DataConfig) -> StreamDataset | None:
    if cfg.stream is False:
        return None
    source, layout, a_files, b_files = _paired_files(cfg)
    n, side = len(a_files), cfg.image_size
    if not should_stream(
        cfg.stream, 2 * n * cfg.channels * side * side, f"{n:,} pairs of {side}x{side}"
    ):
        return None
    stamp = source.stamp(a_files + b_files) if b_files is not None else source.stamp(a_files)
    fp = cache.fingerprint([layout, stamp], _settings(cfg, "resize", "background"))
    decoder = Decoder(side, cfg.channels, cfg.resize, cfg.background, halves=b_files is None)
    part = Part(
        ("input", "target"), source, a_files, decoder, pair=b_files, swap=cfg.direction == "b2a"
    )
    info = DataInfo("paired", cfg.channels, side, size=n)
    return StreamDataset([part], None, info, cache.fingerprint(fp, cfg.direction), _workers(cfg))


def _unpaired_streamed(cfg: DataConfig) -> StreamDataset | None:
    if cfg.stream is False:
        return None
    source, lists = _unpaired_lists(cfg)
    n, side = sum(len(il.files) for il in lists), cfg.image_size
    if not should_stream(cfg.stream, n * cfg.channels * side * side, f"{n:,} images of {side}"):
        return None
    stamp = [source.stamp(il.files) for il in lists]
    fp = cache.fingerprint(stamp, _settings(cfg, "resize", "background"))
    decoder = Decoder(side, cfg.channels, cfg.resize, cfg.background)
    first, second = lists if cfg.direction == "a2b" else lists[::-1]
    parts = [
        Part(("a",), source, first.files, decoder),
        Part(("b",), source, second.files, decoder),
    ]
    info = DataInfo("unpaired", cfg.channels, side, size=max(len(first.files), len(second.files)))
    return StreamDataset(parts, None, info, cache.fingerprint(fp, cfg.direction), _workers(cfg))


_STREAMED: dict[str, Callable[[DataConfig], StreamDataset | None]] = {
    "images": _images_streamed,
    "webdataset": _webdataset_streamed,
    "cifar10": _cifar10_streamed,
    "super_resolution": _super_resolution_streamed,
    "paired": _paired_streamed,
    "unpaired": _unpaired_streamed,
}
