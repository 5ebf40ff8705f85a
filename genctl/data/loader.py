"""Batches for training: shuffled, sharded, on the device, resumable to the exact batch.

The order of epoch ``e`` is a permutation drawn from a ``torch.Generator`` seeded by
``(seed, stream, e)``, so the whole position of the loader is two integers per stream
(epoch, position) and resuming from them replays exactly the same batches. Like
``DistributedSampler``, every rank draws the same permutation, pads it to a multiple of
``world_size`` by repeating its head, and keeps every ``world_size``-th index from ``rank``.
Batches run across epoch boundaries, so every batch is full, even for datasets smaller than
the batch.

The uint8 dataset sits on the device when it fits (always on CPU); a batch is gathered there
and converted to float in [-1, 1], flipped and (super-resolution) downscaled on the device.
Nothing in :meth:`Loader.next` waits for the device.
"""

from __future__ import annotations

import hashlib
import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from genctl.errors import BadInput

if TYPE_CHECKING:  # the dataset module builds streaming datasets, which use this one
    from .dataset import Dataset

IMAGE_TASKS = ("unconditional", "conditional")


def _mix(*parts: int) -> int:
    """A 63-bit seed from integers, with no collisions between nearby tuples."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _fits(device: torch.device, nbytes: int) -> bool:
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= free // 2


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return x.float().div_(127.5).sub_(1.0)


def _assemble(
    dataset: Dataset,
    images: dict[str, torch.Tensor],
    flips: dict[str, torch.Tensor | None],
    label: torch.Tensor | None,
) -> dict[str, torch.Tensor]:
    """The batch dict for the dataset's task from gathered uint8 images on the device."""
    batch = {}
    for key, x in images.items():
        f = flips.get(key)
        if f is not None:  # on uint8: a quarter of the memory traffic of float
            x = torch.where(f.view(-1, 1, 1, 1), x.flip(-1), x)
        # uint8 images become [-1, 1]; a float tensor (a model's prepared data: latents) is
        # batched as it is
        batch[key] = to_unit(x) if x.dtype == torch.uint8 else x.float()
    info = dataset.info
    if info.task == "super_resolution":
        side = info.image_size // info.scale
        lr = F.interpolate(
            batch["hr"], size=(side, side), mode="bicubic", antialias=True, align_corners=False
        )
        batch = {"lr": lr.clamp_(-1.0, 1.0), "hr": batch["hr"]}
    if label is not None:
        batch["label"] = label
    return batch


class _Stream:
    """One shuffled index sequence over keys of equal length, with its own epoch counter."""

    def __init__(self, ident: int, keys: tuple[str, ...], size: int):
        self.ident, self.keys, self.size = ident, keys, size
        self.epoch = 0
        self.position = 0
        self._order: tuple[int, torch.Tensor, torch.Tensor | None] | None = None


class Loader:
    """Endless batches of ``batch_size`` from ``dataset`` for ``rank`` of ``world_size``."""

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        *,
        seed: int,
        device: str | torch.device,
        flip: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.device = torch.device(device)
        self.flip = flip
        self.rank, self.world_size = rank, world_size
        self._streams = [_Stream(i, keys, size) for i, (keys, size) in enumerate(dataset.streams())]
        for s in self._streams:
            if s.size == 0:
                raise BadInput(f"the {'/'.join(s.keys)} images of the dataset are empty")
        self._setup()

    def _setup(self) -> None:
        dataset = self.dataset
        nbytes = sum(t.numel() * t.element_size() for t in dataset.tensors.values())
        # The whole uint8 set on the device when it fits; else gathered on the host per batch.
        self._home = self.device if _fits(self.device, nbytes) else torch.device("cpu")
        self._data = {k: t.to(self._home) for k, t in dataset.tensors.items()}
        self._labels = dataset.labels.to(self._home) if dataset.labels is not None else None

    # ---------------------------------------------------------------- the order

    def per_rank(self, stream: int = 0) -> int:
        """Items a rank sees per epoch of ``stream`` (the padded share, like DistributedSampler)."""
        return math.ceil(self._streams[stream].size / self.world_size)

    @property
    def epoch(self) -> int:
        return self._streams[0].epoch

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.per_rank() / self.batch_size)

    def _order(self, s: _Stream) -> tuple[torch.Tensor, torch.Tensor | None]:
        if s._order is not None and s._order[0] == s.epoch:
            return s._order[1], s._order[2]
        g = torch.Generator().manual_seed(_mix(self.seed, s.ident, s.epoch))
        perm = torch.randperm(s.size, generator=g)
        flips = torch.rand(s.size, generator=g) < 0.5 if self.flip else None
        total = self.per_rank(s.ident) * self.world_size
        if total > s.size:  # pad by repeating the head, as DistributedSampler does
            reps = math.ceil(total / s.size)
            perm = perm.repeat(reps)[:total]
            flips = flips.repeat(reps)[:total] if flips is not None else None
        mine = perm[self.rank : total : self.world_size]
        mine_flips = flips[self.rank : total : self.world_size] if flips is not None else None
        order = _to(mine, self._home)
        flip_order = _to(mine_flips, self.device) if mine_flips is not None else None
        s._order = (s.epoch, order, flip_order)
        return order, flip_order

    def _take(self, s: _Stream) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The next batch_size indices (and flips) of stream ``s``, across epochs if need be."""
        idx, flips, need = [], [], self.batch_size
        per_rank = self.per_rank(s.ident)
        while need:
            order, flip_order = self._order(s)
            take = min(need, per_rank - s.position)
            idx.append(order[s.position : s.position + take])
            if flip_order is not None:
                flips.append(flip_order[s.position : s.position + take])
            s.position += take
            need -= take
            if s.position == per_rank:
                s.epoch, s.position = s.epoch + 1, 0
        cat_idx = idx[0] if len(idx) == 1 else torch.cat(idx)
        cat_flips = (flips[0] if len(flips) == 1 else torch.cat(flips)) if flips else None
        return cat_idx, cat_flips

    # ---------------------------------------------------------------- batches

    def next(self) -> dict[str, torch.Tensor]:
        """The next batch: float images in [-1, 1] on the device (and ``label`` when labelled)."""
        images, flips, label = {}, {}, None
        for s in self._streams:
            idx, f = self._take(s)
            for key in s.keys:
                images[key] = _to(self._data[key].index_select(0, idx), self.device)
                flips[key] = f
            if self._labels is not None and s.ident == 0:
                label = _to(self._labels.index_select(0, idx), self.device)
        return _assemble(self.dataset, images, flips, label)

    def __iter__(self) -> Loader:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        return self.next()

    # ---------------------------------------------------------------- resume

    def state_dict(self) -> dict[str, Any]:
        """The loader's position: plain ints, safe for ``torch.load(weights_only=True)``."""
        return {
            "seed": self.seed,
            "world_size": self.world_size,
            "rank": self.rank,
            "batch_size": self.batch_size,
            "streams": [
                {"size": s.size, "epoch": s.epoch, "position": s.position} for s in self._streams
            ],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        sizes = [s.size for s in self._streams]
        saved = [s["size"] for s in state["streams"]]
        if saved != sizes or state["world_size"] != self.world_size:
            raise BadInput(
                f"the saved data position is for {saved} items on {state['world_size']} process(es); "
                f"this dataset has {sizes} on {self.world_size}",
                "Resume with the same data section and number of processes.",
            )
        self.seed = int(state["seed"])
        for s, st in zip(self._streams, state["streams"], strict=True):
            s.epoch, s.position, s._order = int(st["epoch"]), int(st["position"]), None


def _to(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move to ``device`` without blocking the host (pinned staging for CPU -> CUDA)."""
    if x.device == device:
        return x
    if x.device.type == "cpu" and device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def preview_batch(dataset: Dataset, n: int, device: str | torch.device) -> dict[str, torch.Tensor]:
    """The first ``n`` items (fewer when the dataset is smaller), unflipped: a fixed batch."""
    device = torch.device(device)
    count = min([n] + [size for _, size in dataset.streams()])
    idx = torch.arange(count)
    images = {k: t.to(device) for k, t in dataset.take([idx] * len(dataset.streams())).items()}
    label = dataset.labels[idx].to(device) if dataset.labels is not None else None
    return _assemble(dataset, images, {}, label)
