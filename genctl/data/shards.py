"""``kind: webdataset`` — images in WebDataset tar shards, read with the standard library.

A WebDataset shard is a plain tar archive whose members are grouped into samples by their key:
the member's path up to the first dot of its file name (``000123.jpg`` and ``000123.cls`` are
one sample, ``000123``). A sample's image is its member with an image extension; its class
label, when present, is the integer text of its ``.cls`` member. Samples keep the order of the
shards (sorted by path) and of the members inside them.

``data.root`` is one ``.tar``, a folder of them (``train/`` and ``test/`` sub-folders hold the
splits when present) or a glob such as ``shards/train-*.tar``. Shards must be uncompressed: the
listing records each image's offset, so any image is read with one ``pread`` in any process,
which is what exact shuffling and resume need (a gzipped tar can only be read from the start).
"""

from __future__ import annotations

import glob
import os
import tarfile
from pathlib import Path

from genctl.errors import BadInput

from .sources import IMAGE_SUFFIXES, ImageList

LABEL_SUFFIX = "cls"


class Shards:
    """The samples of tar shards, addressed as ``"<shard>:<member>"``, read like a Source."""

    def __init__(self, paths: list[Path], *, what: str = "data.root"):
        self.paths = paths
        self.path = paths[0].parent  # for messages and progress bars
        self._names = _short_names(paths)
        self._where = dict(zip(self._names, paths, strict=True))
        self._members: dict[str, tuple[str, int, int]] = {}  # rel -> (shard name, offset, size)
        self._labels: dict[str, int] = {}  # key rel -> class
        self.files: list[str] = []  # one image per sample, in shard order
        for name, path in zip(self._names, paths, strict=True):
            self._index(name, path, what)
        self._fds: dict[str, int] = {}
        self._pid = os.getpid()

    def _index(self, name: str, path: Path, what: str) -> None:
        try:
            tar = tarfile.open(path, "r:")  # "r:" refuses compressed archives
        except (tarfile.TarError, OSError) as exc:
            compressed = isinstance(exc, tarfile.ReadError) and tarfile.is_tarfile(path)
            raise BadInput(
                f"{what}: cannot read {path} as an uncompressed tar shard"
                + (" (it is compressed)" if compressed else f": {exc}"),
                "WebDataset shards must be plain .tar files (images are read at their offsets); "
                "recompress with `tar -cf` without -z.",
            ) from None
        images: dict[str, str] = {}
        with tar:
            for m in tar:
                if not m.isfile():
                    continue
                folder, _, base = m.name.rpartition("/")
                stem, dot, ext = base.partition(".")
                if not dot or base.startswith("."):
                    continue
                key = f"{folder}/{stem}" if folder else stem
                rel = f"{name}:{m.name}"
                ext = ext.lower()
                if ext == LABEL_SUFFIX:
                    self._labels[f"{name}:{key}"] = _read_label(tar, m, path)
                elif "." + ext in IMAGE_SUFFIXES:  # not "seg.png": another field of the sample
                    self._members[rel] = (name, m.offset_data, m.size)
                    if key in images:
                        raise BadInput(
                            f"{what}: sample {key!r} in {path} has two images "
                            f"({images[key].rsplit('/', 1)[-1]} and {base})",
                            "Keep one image per sample key (WebDataset groups members by the "
                            "name before the first dot).",
                        )
                    images[key] = m.name
        self.files.extend(f"{name}:{images[k]}" for k in images)

    # -- reading, as Source does

    def read(self, rel: str) -> bytes:
        name, offset, size = self._members[rel]
        if self._pid != os.getpid():  # a forked worker opens its own descriptors
            self._fds, self._pid = {}, os.getpid()
        fd = self._fds.get(name)
        if fd is None:
            fd = self._fds[name] = os.open(self._where[name], os.O_RDONLY)
        return os.pread(fd, size, offset)  # no shared file offset: safe across threads

    def where(self, rel: str = "") -> str:
        if not rel:
            return str(self.path)
        name, _, member = rel.partition(":")
        return f"{self._where[name]}:{member}"

    def stamp(self, rels: list[str] | None = None) -> list:
        """The shards' names, sizes and mtimes: they stand for their contents."""
        out = []
        for name, path in self._where.items():
            st = path.stat()
            out.append([name, st.st_size, st.st_mtime_ns])
        return out

    def label(self, rel: str) -> int | None:
        name, _, member = rel.partition(":")
        folder, _, base = member.rpartition("/")
        stem = base.partition(".")[0]
        return self._labels.get(f"{name}:{folder}/{stem}" if folder else f"{name}:{stem}")

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_fds"], state["_pid"] = {}, None
        return state

    def __del__(self) -> None:
        if getattr(self, "_pid", None) == os.getpid():
            for fd in getattr(self, "_fds", {}).values():
                try:
                    os.close(fd)
                except OSError:
                    pass


def _read_label(tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path) -> int:
    f = tar.extractfile(member)
    text = f.read().decode("utf-8", "replace").strip() if f else ""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise BadInput(
            f"data.root: label {member.name} in {path} is {text[:20]!r}, not a class index",
            "A .cls member holds the sample's class as a non-negative integer.",
        )
    return value


def _short_names(paths: list[Path]) -> list[str]:
    """Shard names for addresses: paths relative to their common folder."""
    if len(paths) == 1:
        return [paths[0].name]
    common = Path(os.path.commonpath([str(p.parent) for p in paths]))
    return [p.relative_to(common).as_posix() for p in paths]


def find_shards(root: str, split: str, *, what: str = "data.root") -> list[Path]:
    """The shard files of ``split`` that ``root`` names (a file, a folder or a glob)."""
    expanded = os.path.expanduser(root)
    if glob.has_magic(expanded):
        paths = sorted(Path(p) for p in glob.glob(expanded) if Path(p).is_file())
        where = f"the pattern {root!r}"
    else:
        path = Path(expanded)
        if not path.exists():
            raise BadInput(
                f"{what}: {root!r} does not exist (resolved to {path.resolve()})",
                "Point it at a .tar shard, a folder of them, or a glob such as shards/*.tar.",
            )
        if path.is_file():
            paths, where = [path], str(path)
        else:
            if (path / split).is_dir():
                path = path / split
            elif split != "train":
                raise BadInput(
                    f"{what}: {path} has no {split}/ folder of shards",
                    "Lay the shards out as train/ and test/ sub-folders, or use data.split=train.",
                )
            paths = sorted(p for p in path.iterdir() if p.suffix == ".tar" and p.is_file())
            where = str(path)
    if not paths:
        raise BadInput(
            f"{what}: no .tar shards found in {where}",
            "Give a .tar shard, a folder of them, or a glob such as shards/*.tar.",
        )
    return paths


def list_samples(
    shards: Shards, *, labels: bool, limit: int | None, what: str = "data.root"
) -> ImageList:
    """The samples' images, with their ``.cls`` labels when asked and every sample has one."""
    files = shards.files[:limit] if limit else list(shards.files)
    if not files:
        raise BadInput(
            f"{what}: no images (png, jpg, jpeg, webp, bmp) in the shards of {shards.path}",
            "Each sample needs an image member such as 000123.jpg.",
        )
    if not labels or not shards._labels:
        return ImageList(shards, files, None, ())  # type: ignore[arg-type]
    labs = [shards.label(f) for f in files]
    missing = [f for f, lab in zip(files, labs, strict=True) if lab is None]
    if missing:
        raise BadInput(
            f"{what}: {len(missing)} sample(s) such as {shards.where(missing[0])} have no "
            ".cls label while others do",
            "Give every sample a .cls member, or set data.labels=false to ignore labels.",
        )
    classes = max(labs) + 1  # type: ignore[type-var]
    return ImageList(shards, files, labs, tuple(str(c) for c in range(classes)))  # type: ignore[arg-type]
