"""Data-parallel training under ``torchrun``: one process per device, rank 0 records.

Every rank builds the same networks (rank 0's weights are broadcast), draws its own shard of
each batch and its own noise, and averages the gradients of each update with the others before
its optimizer steps, so all ranks keep the same weights.

Gradients are averaged in buckets while the backward pass still runs, the scheme of PyTorch's
``DistributedDataParallel``: each optimizer group's parameters are cut into buckets of about
``GENCTL_BUCKET_MB`` megabytes (default :data:`BUCKET_MB`) in reverse order of
``parameters()``, roughly the order in which backward produces their gradients. A hook on each
parameter (``register_post_accumulate_grad_hook``) copies its gradient into its bucket as soon
as autograd has accumulated it; a full bucket starts an asynchronous all-reduce, and the rest of
the backward runs while it travels. After the backward the buckets not yet started (those of
parameters this rank's graph did not reach) are started, all are waited for, and each
parameter's ``.grad`` becomes its slice of the averaged bucket.

Why hooks rather than wrapping the networks in ``DistributedDataParallel``: a family's objective
calls its networks directly, several per update (the generator step runs the discriminator with
its weights frozen, the discriminator step runs the generator under ``no_grad``), and the trainer
switches ``requires_grad`` per optimizer group; gradient penalties (WGAN-GP, R1) differentiate
twice. DDP wraps one module, fixes the parameters it reduces when it is built and expects each of
them to get a gradient in every backward of that module. Here the reduction belongs to the
update instead: the hooks act only while :meth:`Distributed.reducing` is entered for a group,
and only on that group's parameters, whatever networks the loss ran through.

- ``train.accumulate`` K: the trainer enters ``reducing`` for the last of the K backward passes
  alone. Earlier micro-batches add into ``.grad`` without any communication (DDP's
  ``no_sync``); the hooks of the last pass see the sum of all K.
- Buckets start strictly in their order on every rank (a full bucket waits for the ones before
  it), so the collectives match across ranks even when data-dependent branches (style mixing,
  say) change the order in which gradients arrive. A parameter without a gradient on a rank
  counts as zero there, so ranks whose graphs differ still agree.
- ``torch.autograd.grad`` (the penalties' input gradients) accumulates nothing into ``.grad``
  and fires no hook.

A single process (no ``WORLD_SIZE``, or 1) does none of this: ``reducing`` is a no-op.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from genctl.errors import BadInput

BUCKET_MB = 4.0
"""Default bucket size in megabytes (``GENCTL_BUCKET_MB`` overrides it); see bench/ddp_scaling.py."""


def pick_device(setting: str, local_rank: int = 0) -> torch.device:
    """The device of ``train.device`` (``auto``: this rank's GPU, else MPS, else the CPU)."""
    if setting == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(setting)
    except RuntimeError:
        raise BadInput(
            f"train.device: {setting!r} is not a device", "Use auto, cpu, cuda, cuda:N or mps."
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BadInput(
            "train.device is cuda but no CUDA GPU is available", "Use train.device=auto or cpu."
        )
    return device


def bucket_bytes() -> int:
    """The bucket size in bytes: ``GENCTL_BUCKET_MB`` when set, else :data:`BUCKET_MB`."""
    raw = os.environ.get("GENCTL_BUCKET_MB", "")
    try:
        mb = float(raw) if raw else BUCKET_MB
    except ValueError:
        raise BadInput(
            f"GENCTL_BUCKET_MB={raw!r} is not a number", "Give megabytes, e.g. 4 or 0.5."
        ) from None
    if mb <= 0:
        raise BadInput(f"GENCTL_BUCKET_MB={raw!r} must be positive", "Give megabytes, e.g. 4.")
    return int(mb * 2**20)


class Distributed:
    """This process's rank, the number of ranks and its device; the collectives the loop uses."""

    def __init__(self, rank: int, world: int, device: torch.device):
        self.rank, self.world, self.device = rank, world, device
        self._reducers: dict[str, BucketReducer] = {}

    @classmethod
    def from_env(cls, device_setting: str) -> Distributed:
        """From torchrun's ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` (one process without them);
        joins the process group (NCCL on GPUs, gloo on the CPU)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = pick_device(device_setting, local)
        if world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(rank, world, device)

    def broadcast(self, nets: Mapping[str, nn.Module]) -> None:
        """Rank 0's weights and buffers to every rank."""
        if self.world == 1:
            return
        import torch.distributed as dist

        for net in nets.values():
            for t in list(net.parameters()) + list(net.buffers()):
                dist.broadcast(t.data, src=0)

    def watch(self, group_params: Mapping[str, Sequence[torch.Tensor]]) -> None:
        """Get ready to reduce the gradients of each optimizer group (hooks on its parameters)."""
        if self.world == 1:
            return
        size = bucket_bytes()
        self._reducers = {
            g: BucketReducer(params, self.world, size) for g, params in group_params.items()
        }

    @contextmanager
    def reducing(self, group: str) -> Iterator[None]:
        """Backward passes inside average ``group``'s gradients across ranks, in buckets that
        travel while the backward runs; on leaving, every ``.grad`` of the group is the average."""
        reducer = self._reducers.get(group)
        if reducer is None:
            yield
            return
        reducer.start()
        try:
            yield
        except BaseException:
            reducer.abandon()
            raise
        reducer.finish()

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any rank (one tiny all-reduce under torchrun)."""
        if self.world == 1:
            return flag
        import torch.distributed as dist

        t = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def close(self, together: bool = False) -> None:
        """Leave the process group. ``together`` (a run that ended normally on this rank): wait
        for every rank first, so no rank tears its connections down while rank 0 still records
        the run (a rank that left early was seen to abort in gloo's teardown)."""
        for reducer in self._reducers.values():
            reducer.remove()
        self._reducers = {}
        if self.world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                if together:
                    dist.barrier()
                dist.destroy_process_group()


class _Bucket:
    def __init__(self, params: list[torch.Tensor]):
        self.params = params
        self.offsets: list[int] = []
        n = 0
        for p in params:
            self.offsets.append(n)
            n += p.numel()
        self.numel = n
        self.flat: torch.Tensor | None = None
        self.filled: list[bool] = []
        self.waiting = 0
        self.work = None


class BucketReducer:
    """The bucketed, backward-overlapped gradient average of one list of parameters.

    ``start()`` before a backward pass, ``finish()`` after it (or ``abandon()``). Between them,
    each parameter's post-accumulate-grad hook copies its gradient into its bucket; full buckets
    start an asynchronous all-reduce in bucket order. ``finish()`` starts the rest (a missing
    gradient as zeros), waits, and sets each ``.grad`` to its share of the averaged bucket.
    """

    def __init__(self, params: Sequence[torch.Tensor], world: int, bucket_bytes: int):
        self.world = world
        self.buckets: list[_Bucket] = []
        self.where: dict[int, tuple[_Bucket, int]] = {}  # id(param) -> (bucket, index in it)
        current: list[torch.Tensor] = []
        size = 0
        for p in reversed(list(params)):  # backward meets the last layers first
            same_kind = not current or (
                p.dtype == current[0].dtype and p.device == current[0].device
            )
            if current and (size >= bucket_bytes or not same_kind):
                self._add(current)
                current, size = [], 0
            current.append(p)
            size += p.numel() * p.element_size()
        if current:
            self._add(current)
        self.active = False
        self.next = 0  # the first bucket not yet started
        self.handles = []
        for p in params:
            was = p.requires_grad
            p.requires_grad_(True)  # hooks go on tensors that require gradients
            self.handles.append(p.register_post_accumulate_grad_hook(self._ready))
            p.requires_grad_(was)

    def _add(self, params: list[torch.Tensor]) -> None:
        bucket = _Bucket(params)
        for i, p in enumerate(params):
            self.where[id(p)] = (bucket, i)
        self.buckets.append(bucket)

    def start(self) -> None:
        for b in self.buckets:
            b.flat = None
            b.filled = [False] * len(b.params)
            b.waiting = len(b.params)
            b.work = None
        self.next = 0
        self.active = True

    def _ready(self, p: torch.Tensor) -> None:
        """Hook: ``p.grad`` holds its whole gradient of this backward; into the bucket with it."""
        if not self.active:
            return
        found = self.where.get(id(p))
        if found is None:
            return
        bucket, i = found
        if bucket.filled[i]:  # a second backward in the same update: the bucket has left
            raise RuntimeError(
                "a parameter's gradient arrived twice within one reduced update; "
                "an objective must return one loss per update"
            )
        self._put(bucket, i, p.grad)
        self._launch_ready()

    def _put(self, bucket: _Bucket, i: int, grad: torch.Tensor | None) -> None:
        p = bucket.params[i]
        if bucket.flat is None:
            bucket.flat = torch.zeros(bucket.numel, dtype=p.dtype, device=p.device)
        if grad is not None:
            o = bucket.offsets[i]
            bucket.flat[o : o + p.numel()].copy_(grad.reshape(-1))
        bucket.filled[i] = True
        bucket.waiting -= 1

    def _launch_ready(self) -> None:
        import torch.distributed as dist

        while self.next < len(self.buckets) and self.buckets[self.next].waiting == 0:
            bucket = self.buckets[self.next]
            bucket.work = dist.all_reduce(bucket.flat, async_op=True)
            self.next += 1

    def finish(self) -> None:
        """Start the buckets still waiting (gradients of earlier micro-batches, or zeros where a
        parameter got none), wait for all, and hand each parameter its averaged gradient."""
        for bucket in self.buckets[self.next :]:
            for i, p in enumerate(bucket.params):
                if not bucket.filled[i]:
                    self._put(bucket, i, p.grad)
        self._launch_ready()
        self.active = False
        for bucket in self.buckets:
            bucket.work.wait()
            bucket.flat.div_(self.world)
            for p, o in zip(bucket.params, bucket.offsets, strict=True):
                p.grad = bucket.flat[o : o + p.numel()].view_as(p)
            bucket.flat = None  # the next update gets fresh buckets; the grads keep these

    def abandon(self) -> None:
        """An error during the backward: stop collecting (started all-reduces are dropped)."""
        self.active = False
        for bucket in self.buckets:
            bucket.flat, bucket.work = None, None

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
