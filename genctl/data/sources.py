"""Where image files come from: a folder or a zip archive, addressed by relative paths.

A :class:`Source` lists its image files once (sorted, hidden files and ``__MACOSX`` left out)
and reads them as bytes. Folders and zip archives behave the same, so every data kind that
takes a folder also takes a ``.zip``. Helpers below find the split and class sub-folders of
an image collection the way people lay them out.
"""

from __future__ import annotations

import os
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

from genctl.errors import BadInput

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
SPLIT_NAMES = ("train", "test")


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def _is_hidden(rel: str) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in rel.split("/"))


class Source:
    """The image files under a folder or inside a zip archive."""

    def __init__(self, path: str | Path, *, what: str = "data.root"):
        self.path = Path(path).expanduser()
        if not self.path.exists():
            raise BadInput(
                f"{what}: {str(path)!r} does not exist (resolved to {self.path.resolve()})",
                "Point it at a folder or a .zip of images (png, jpg, jpeg, webp, bmp); "
                "relative paths are relative to the working directory.",
            )
        self.is_zip = self.path.is_file()
        self._lock = threading.Lock()  # decoding threads share one zip handle
        self._pid = os.getpid()  # a DataLoader worker opens its own handle (see read)
        if self.is_zip:
            if not zipfile.is_zipfile(self.path):
                raise BadInput(
                    f"{what}: {self.path} is a file but not a zip archive",
                    "Give a folder of images or a .zip archive of them.",
                )
            try:
                self._zip = zipfile.ZipFile(self.path)
            except (zipfile.BadZipFile, OSError) as exc:
                raise BadInput(f"{what}: cannot read zip archive {self.path}: {exc}") from None
            infos = [i for i in self._zip.infolist() if not i.is_dir()]
            self._zip_info = {i.filename: (i.file_size, i.CRC) for i in infos}
            names = self._zip_info
        else:
            names = _walk(self.path)
        self.files: list[str] = sorted(n for n in names if _is_image(n) and not _is_hidden(n))

    # -- reading

    def read(self, rel: str) -> bytes:
        if not self.is_zip:
            return (self.path / rel).read_bytes()
        if self._pid != os.getpid():  # a forked worker: the inherited handle's offset is shared
            self._zip, self._lock, self._pid = (
                zipfile.ZipFile(self.path),
                threading.Lock(),
                os.getpid(),
            )
        with self._lock:  # reading is quick; decoding, outside the lock, is the work
            return self._zip.read(rel)

    def __getstate__(self) -> dict:
        """Picklable for spawned DataLoader workers: the zip is opened again there."""
        state = dict(self.__dict__)
        state.pop("_zip", None)
        state["_lock"], state["_pid"] = None, None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def where(self, rel: str = "") -> str:
        """A path for messages: ``folder/rel`` or ``archive.zip:rel``."""
        if not rel:
            return str(self.path)
        return f"{self.path}:{rel}" if self.is_zip else str(self.path / rel)

    def stamp(self, rels: list[str]) -> list:
        """What identifies these files' contents cheaply: names, sizes and mtimes (CRCs in a zip)."""
        if self.is_zip:
            st = self.path.stat()
            return [str(self.path.name), st.st_size, st.st_mtime_ns] + [
                [r, *self._zip_info[r]] for r in rels
            ]
        out = []
        for r in rels:
            st = (self.path / r).stat()
            out.append([r, st.st_size, st.st_mtime_ns])
        return out

    # -- layout

    def under(self, prefix: str) -> list[str]:
        """Image files below the folder ``prefix`` ("" for all)."""
        if not prefix:
            return list(self.files)
        p = prefix.rstrip("/") + "/"
        return [f for f in self.files if f.startswith(p)]

    def children(self, prefix: str) -> tuple[list[str], list[str]]:
        """(sub-folders holding images, image files) directly inside the folder ``prefix``."""
        p = prefix.rstrip("/") + "/" if prefix else ""
        dirs: set[str] = set()
        files = []
        for f in self.files:
            if not f.startswith(p):
                continue
            rest = f[len(p) :]
            if "/" in rest:
                dirs.add(p + rest.split("/", 1)[0])
            else:
                files.append(f)
        return sorted(dirs), files

    def has_dir(self, prefix: str) -> bool:
        p = prefix.rstrip("/") + "/"
        return any(f.startswith(p) for f in self.files)


def _walk(root: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d != "__MACOSX"]
        rel = os.path.relpath(dirpath, root)
        base = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        out.extend(base + f for f in filenames)
    return out


@dataclass
class ImageList:
    """Image files chosen from a source, with class indices when labelled."""

    source: Source
    files: list[str]
    labels: list[int] | None
    class_names: tuple[str, ...]


def basename(prefix: str) -> str:
    """The last component of a folder prefix."""
    return prefix.rstrip("/").rsplit("/", 1)[-1]


def split_root(source: Source, split: str, *, what: str = "data.root") -> str:
    """The folder (prefix) holding the images of ``split``.

    Wrapper folders (one sub-folder and no images, as in ``celeba.zip/celebA/``) are
    descended. A level with ``train/`` or ``test/`` sub-folders is a split level: the one
    named by ``split`` is taken. Without split folders every image is in the train split.
    """
    prefix = ""
    while True:
        dirs, files = source.children(prefix)
        names = {basename(d): d for d in dirs}
        if not files and any(s in names for s in SPLIT_NAMES):
            if split not in names:
                raise BadInput(
                    f"{what}: no {split!r} split in {source.where(prefix) or source.path}: "
                    f"found {', '.join(sorted(names))}",
                    f"Expected {split}/ beside the other split folders; use data.split=train.",
                )
            return names[split]
        if not files and len(dirs) == 1:
            prefix = dirs[0]
            continue
        if split != "train":
            raise BadInput(
                f"{what}: {source.where(prefix) or source.path} has no {split}/ folder",
                "This dataset has a train split only; use data.split=train, or lay the "
                "images out as train/ and test/ sub-folders.",
            )
        return prefix


def list_images(
    source: Source, prefix: str, *, labels: bool, limit: int | None, what: str = "data.root"
) -> ImageList:
    """The images under ``prefix``; class sub-folders become labels when asked and >= 2.

    With labels, files are sorted within each class and the classes interleaved
    (class 0's first, class 1's first, ..., class 0's second, ...), so that ``limit``
    keeps every class rather than the first class alone.
    """
    dirs, loose = source.children(prefix)
    if labels and len(dirs) >= 2:
        if loose:
            raise BadInput(
                f"{what}: {len(loose)} image(s) such as {loose[0]!r} lie beside the class "
                f"sub-folders of {source.where(prefix)}",
                "Move them into a class folder, or set data.labels=false to ignore classes.",
            )
        index = {d: k for k, d in enumerate(dirs)}
        per_class: list[list[str]] = [[] for _ in dirs]
        p = prefix.rstrip("/") + "/" if prefix else ""
        for f in source.under(prefix):  # sorted, so each class's list is sorted
            per_class[index[p + f[len(p) :].split("/", 1)[0]]].append(f)
        files, labs = [], []
        for i in range(max(len(c) for c in per_class)):
            for k, c in enumerate(per_class):
                if i < len(c):
                    files.append(c[i])
                    labs.append(k)
        if limit is not None:
            files, labs = files[:limit], labs[:limit]
        return ImageList(source, files, labs, tuple(basename(d) for d in dirs))
    files = source.under(prefix)
    if not files:
        raise BadInput(
            f"{what}: no images (png, jpg, jpeg, webp, bmp) found in {source.where(prefix)}",
            "Expected image files, optionally in one sub-folder per class.",
        )
    return ImageList(source, files[:limit] if limit else files, None, ())
