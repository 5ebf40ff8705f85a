"""The Loader: batch format, shuffling by epoch, sharding, flips, and exact resume."""

from __future__ import annotations

import io

import pytest
import torch

from genctl.data import Dataset, Loader, preview_batch
from genctl.errors import BadInput
from genctl.spec import DataInfo


def numbered(n: int, task: str = "conditional") -> Dataset:
    """A dataset whose item i is an image filled with the value i (label i % 3)."""
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    labels = torch.arange(n) % 3
    info = DataInfo(
        task, channels=1, image_size=2, num_classes=3, class_names=("a", "b", "c"), size=n
    )
    return Dataset({"image": images}, labels, info)


def items(batch: dict[str, torch.Tensor], key: str = "image") -> list[int]:
    """The item numbers in a batch of a numbered dataset."""
    return torch.round((batch[key][:, 0, 0, 0] + 1) * 127.5).long().tolist()


def unpaired(n_a: int, n_b: int) -> Dataset:
    a = torch.arange(n_a, dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).contiguous()
    b = (
        (100 + torch.arange(n_b, dtype=torch.uint8))
        .view(-1, 1, 1, 1)
        .expand(-1, 1, 2, 2)
        .contiguous()
    )
    return Dataset({"a": a, "b": b}, None, DataInfo("unpaired", 1, 2, size=max(n_a, n_b)))


def test_batches_are_float_in_minus_one_to_one_with_int64_labels():
    batch = Loader(numbered(10), 4, seed=0, device="cpu").next()
    assert set(batch) == {"image", "label"}
    assert batch["image"].dtype == torch.float32 and batch["image"].shape == (4, 1, 2, 2)
    assert batch["label"].dtype == torch.int64
    assert items(batch) == [i for i in items(batch) if 0 <= i < 10]
    assert batch["label"].tolist() == [i % 3 for i in items(batch)]


def test_uint8_maps_to_exactly_minus_one_and_one():
    images = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1)
    ds = Dataset({"image": images}, None, DataInfo("unconditional", 1, 1, size=2))
    batch = preview_batch(ds, 2, "cpu")
    assert batch["image"].flatten().tolist() == [-1.0, 1.0] and "label" not in batch


def test_each_epoch_is_a_fresh_permutation():
    loader = Loader(numbered(12), 4, seed=0, device="cpu")
    epochs = [sum((items(loader.next()) for _ in range(3)), []) for _ in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(12))
    assert epochs[0] != epochs[1]
    assert loader.epoch == 2


def test_the_seed_decides_the_order():
    first = items(Loader(numbered(50), 10, seed=1, device="cpu").next())
    same = items(Loader(numbered(50), 10, seed=1, device="cpu").next())
    other = items(Loader(numbered(50), 10, seed=2, device="cpu").next())
    assert first == same and first != other


def test_batches_run_across_epochs_and_outgrow_tiny_datasets():
    loader = Loader(numbered(3), 8, seed=0, device="cpu")
    batch = items(loader.next())
    assert len(batch) == 8
    assert sorted(batch[:3]) == sorted(batch[3:6]) == [0, 1, 2]
    assert loader.epoch == 2


def _resume_matches(dataset: Dataset, keys: tuple[str, ...], **kw) -> None:
    straight = Loader(dataset, 5, seed=7, device="cpu", **kw)
    interrupted = Loader(dataset, 5, seed=7, device="cpu", **kw)
    for _ in range(7):
        straight.next()
        interrupted.next()
    buffer = io.BytesIO()
    torch.save(interrupted.state_dict(), buffer)
    buffer.seek(0)
    resumed = Loader(dataset, 5, seed=999, device="cpu", **kw)  # the state carries the seed
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    for _ in range(10):
        want, got = straight.next(), resumed.next()
        for key in keys:
            assert torch.equal(want[key], got[key])


def test_resume_continues_with_exactly_the_same_batches():
    _resume_matches(numbered(23), ("image", "label"), flip=True)


def test_resume_of_unpaired_domains_drawn_independently():
    _resume_matches(unpaired(9, 13), ("a", "b"), flip=True)


def test_resume_of_a_shard():
    _resume_matches(numbered(23), ("image",), rank=1, world_size=3)


def test_resume_refuses_a_state_for_another_dataset():
    state = Loader(numbered(10), 4, seed=0, device="cpu").state_dict()
    with pytest.raises(BadInput, match="saved data position"):
        Loader(numbered(11), 4, seed=0, device="cpu").load_state_dict(state)


@pytest.mark.parametrize("n", [12, 14])
def test_shards_cover_the_dataset_like_distributed_sampler(n):
    world = 3
    loaders = [
        Loader(numbered(n), 1, seed=3, device="cpu", rank=r, world_size=world) for r in range(world)
    ]
    per_rank = loaders[0].per_rank()
    assert per_rank == -(-n // world)
    shards = [[items(ld.next())[0] for _ in range(per_rank)] for ld in loaders]
    seen = sum(shards, [])
    assert sorted(set(seen)) == list(range(n))  # every item, on some rank
    assert len(seen) - len(set(seen)) == per_rank * world - n  # repeats only to pad
    if n % world == 0:
        assert all(set(a).isdisjoint(b) for i, a in enumerate(shards) for b in shards[i + 1 :])


def test_unpaired_domains_are_drawn_independently():
    loader = Loader(unpaired(4, 6), 12, seed=0, device="cpu")
    batch = loader.next()
    a, b = items(batch, "a"), items(batch, "b")
    assert sorted(a[:4]) == [0, 1, 2, 3] and sorted(b[:6]) == list(range(100, 106))


def test_flips_mirror_some_images_and_keep_the_rest():
    images = torch.arange(4, dtype=torch.uint8).view(1, 1, 1, 4).expand(64, 1, 4, 4).contiguous()
    ds = Dataset({"image": images}, None, DataInfo("unconditional", 1, 4, size=64))
    batch = Loader(ds, 64, seed=0, device="cpu", flip=True).next()["image"]
    first_column = torch.round((batch[:, 0, 0, 0] + 1) * 127.5)
    assert set(first_column.tolist()) == {0.0, 3.0}  # as is, or mirrored
    assert 10 < int((first_column == 3).sum()) < 54


def test_paired_input_and_target_are_flipped_together():
    ramp = torch.arange(4, dtype=torch.uint8).view(1, 1, 1, 4).expand(32, 1, 4, 4).contiguous()
    ds = Dataset({"input": ramp, "target": ramp.clone()}, None, DataInfo("paired", 1, 4, size=32))
    batch = Loader(ds, 32, seed=0, device="cpu", flip=True).next()
    assert torch.equal(batch["input"], batch["target"])
    assert not torch.equal(batch["input"][:, :, :, 0], batch["input"][:1, :, :, 0].expand(32, 1, 4))


def test_preview_batch_is_the_first_items_in_order():
    batch = preview_batch(numbered(10), 4, "cpu")
    assert items(batch) == [0, 1, 2, 3] and batch["label"].tolist() == [0, 1, 2, 0]
    assert items(preview_batch(numbered(3), 8, "cpu")) == [0, 1, 2]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_stay_on_the_device_without_host_sync():
    loader = Loader(numbered(40), 8, seed=0, device="cuda", flip=True)
    loader.next()  # the first epoch's order is staged here
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronising call now raises
    try:
        batches = [loader.next() for _ in range(10)]  # crosses an epoch boundary
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(b["image"].is_cuda and b["label"].is_cuda for b in batches)
