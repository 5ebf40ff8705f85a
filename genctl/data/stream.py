"""Data beyond memory: images decoded on the fly by ``DataLoader`` worker processes.

A :class:`StreamDataset` holds, instead of decoded tensors, the list of files of each stream
and the :class:`~genctl.data.decode.Decoder` the in-memory path uses. The
:class:`StreamLoader` draws the same order as the in-memory :class:`~genctl.data.Loader` (the
permutation of epoch ``e`` a pure function of ``(seed, stream, e)``, each rank its share) and
hands each batch's indices to a worker, which decodes the files into uint8 tensors; flips,
the conversion to [-1, 1] and the super-resolution input are made on the device as in memory.
So a streaming run and an in-memory run of one recipe see the same batches, bit for bit, and
the loader's position is the same two integers per stream in the checkpoint.

The workers decode ahead of the training step (``prefetch`` batches each); the main process
checks that every batch it receives is the one its own position says comes next.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from genctl.spec import DataInfo

from .decode import Decoder
from .loader import Loader, _assemble, _Stream, _to

# Decoded sets above this share of the machine's memory stream unless data.stream says otherwise.
MEMORY_SHARE = 0.25


@dataclass(eq=False)
class Part:
    """One stream: the files whose decoded images fill ``keys`` (two keys for an AB image)."""

    keys: tuple[str, ...]
    source: Any  # a Source or Shards: read(rel) -> bytes, where(rel) -> str
    files: list[str]
    decoder: Decoder
    pair: list[str] | None = None  # paired A/ and B/ folders: the B file of each A file
    swap: bool = False  # the two images fill the keys in the other order (direction b2a)

    def __len__(self) -> int:
        return len(self.files)

    def decode(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        """uint8 N x C x S x S per key, as :func:`~genctl.data.decode.decode_all` lays them out."""
        rows: list[list[np.ndarray]] = []
        for i in indices.tolist():
            arrays = self.decoder(self.source, self.files[i])
            if self.pair is not None:
                arrays = arrays + self.decoder(self.source, self.pair[i])
            rows.append(arrays[::-1] if self.swap else arrays)
        out = {}
        for j, key in enumerate(self.keys):
            stacked = np.stack([r[j] for r in rows]) if rows else np.empty((0, 1, 1, 1), np.uint8)
            out[key] = torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous()
        return out


@dataclass(eq=False)
class StreamDataset:
    """Images read and decoded when a batch needs them, in the order a Loader draws."""

    parts: list[Part]
    labels: torch.Tensor | None
    info: DataInfo
    fingerprint: str = ""
    workers: int = 2
    tensors: dict = field(default_factory=dict)  # none in memory (kept for code that asks)

    def __len__(self) -> int:
        return self.info.size

    def streams(self) -> list[tuple[tuple[str, ...], int]]:
        return [(p.keys, len(p)) for p in self.parts]

    def take(self, indices: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The uint8 images at ``indices[s]`` of each stream ``s``, decoded here."""
        out: dict[str, torch.Tensor] = {}
        for part, idx in zip(self.parts, indices, strict=True):
            out.update(part.decode(idx))
        return out


class _Batches(torch.utils.data.Dataset):
    """What a worker does: a request (one index tensor per stream) -> the decoded batch."""

    def __init__(self, dataset: StreamDataset):
        self.dataset = dataset

    def __len__(self) -> int:  # unused: the requests come from _Requests
        return len(self.dataset)

    def __getitem__(self, request: tuple[torch.Tensor, ...]) -> dict[str, Any]:
        return {"index": request, "images": self.dataset.take(list(request))}


class _Requests(torch.utils.data.Sampler):
    """The index tensors of the batches to come, from a copy of the loader's position."""

    def __init__(self, loader: StreamLoader):
        # weak: a loader dropped is then freed at once, and its workers stopped with it (a cycle
        # would leave them to the garbage collector, whose order makes their shutdown time out)
        self.loader = weakref.ref(loader)
        # the position now: without workers, iteration starts only at the first batch
        self.start = [(s.ident, s.keys, s.size, s.epoch, s.position) for s in loader._streams]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        ahead = []
        for ident, keys, size, epoch, position in self.start:
            ahead.append(_Stream(ident, keys, size))
            ahead[-1].epoch, ahead[-1].position = epoch, position
        while True:
            loader = self.loader()
            if loader is None:
                return
            request = tuple(loader._take(a)[0] for a in ahead)
            del loader  # no strong reference held while suspended
            yield request


def _worker_init(_: int) -> None:
    # Ctrl-C reaches every process of the terminal's group: the main process saves a checkpoint
    # and stops the workers itself, so a worker must not die of it mid-batch.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class StreamLoader(Loader):
    """A :class:`~genctl.data.Loader` whose batches DataLoader workers decode from the files."""

    def __init__(self, dataset: StreamDataset, batch_size: int, **kw: Any):
        self.prefetch = 2
        super().__init__(dataset, batch_size, **kw)  # type: ignore[arg-type]

    def _setup(self) -> None:
        self._home = torch.device("cpu")  # the order lives on the host, next to the workers
        self._labels = self.dataset.labels
        self._start()

    def _start(self) -> None:
        """(Re)start the workers from the current position."""
        self._it = None  # the old iterator's workers shut down when it is dropped
        workers = self.dataset.workers
        loader = torch.utils.data.DataLoader(
            _Batches(self.dataset),
            batch_size=None,  # a request is a whole batch
            sampler=_Requests(self),
            num_workers=workers,
            collate_fn=_identity,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=_worker_init if workers else None,
            prefetch_factor=self.prefetch if workers else None,
            persistent_workers=False,
        )
        self._it = iter(loader)

    def next(self) -> dict[str, torch.Tensor]:
        takes = [self._take(s) for s in self._streams]
        got = next(self._it)
        for (idx, _), sent in zip(takes, got["index"], strict=True):
            if not torch.equal(idx, sent):  # the workers' order must be the loader's
                raise RuntimeError("streaming loader: a batch arrived out of order")
        images, flips, label = {}, {}, None
        for s, (idx, f) in zip(self._streams, takes, strict=True):
            for key in s.keys:
                images[key] = _to(got["images"][key], self.device)
                flips[key] = f
            if self._labels is not None and s.ident == 0:
                label = _to(self._labels.index_select(0, idx), self.device)
        return _assemble(self.dataset, images, flips, label)  # type: ignore[arg-type]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._start()  # the batches decoded ahead were for the old position


def _identity(x: Any) -> Any:
    return x


def default_workers(processes: int = 1) -> int:
    """Decode processes per training process: the cores it may use divided by the training
    processes on this node, at least 1, at most 4 (see bench/data_stream.py)."""
    from genctl.threads import cores

    return max(1, min(4, cores() // max(1, processes)))


def local_processes() -> int:
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))


def memory_budget() -> int:
    """Bytes a decoded set may take in memory before it streams by default."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 << 30
    return int(total * MEMORY_SHARE) // local_processes()


def should_stream(stream: bool | None, nbytes: int, what: str) -> bool:
    """``data.stream`` when set; else whether ``nbytes`` of decoded images exceed the budget,
    said on stderr when it streams."""
    if stream is not None:
        return stream
    budget = memory_budget()
    if nbytes <= budget:
        return False
    print(
        f"data: {what} would take {_gb(nbytes)} decoded, more than {_gb(budget)} "
        f"({MEMORY_SHARE:.0%} of this machine's memory): streaming from the files "
        "(data.stream=false decodes into memory)",
        file=sys.stderr,
    )
    return True


def _gb(n: int) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{math.ceil(n / 2**20)} MB"
