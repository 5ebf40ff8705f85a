"""Data beyond memory: streamed batches equal in-memory ones, resume exactly, WebDataset shards,
and data.resize for non-square images."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from genctl.data import (
    DataConfig,
    Loader,
    StreamDataset,
    StreamLoader,
    load_dataset,
    make_loader,
    open_dataset,
    preview_batch,
)
from genctl.data import stream as stream_module
from genctl.errors import BadInput
from genctl.testing import _same_state
from tests.data.files import noise_image, write_image, zip_folder

CLASSES = ("cat", "dog", "fox")


def labelled_folder(root: Path, per_class: int = 7) -> Path:
    """Class folders of noise images, neither square nor all of one size (crops must agree)."""
    for k, name in enumerate(CLASSES):
        for i in range(per_class + k):  # classes of different sizes
            write_image(root / name / f"{i:03d}.png", noise_image(100 * k + i, 9 + i % 3, 13))
    return root


def write_shards(folder: Path, items: list[tuple[np.ndarray, int | None]], per_shard: int) -> Path:
    """WebDataset shards: sample ``000012`` as ``000012.png`` (+ ``000012.cls``)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for s in range(0, len(items), per_shard):
        with tarfile.open(folder / f"shard-{s // per_shard:03d}.tar", "w") as tar:
            for i, (pixels, label) in enumerate(items[s : s + per_shard], start=s):
                buf = io.BytesIO()
                Image.fromarray(pixels).save(buf, format="PNG")
                members = [(f"{i:06d}.png", buf.getvalue())]
                if label is not None:
                    members.append((f"{i:06d}.cls", str(label).encode()))
                for name, data in members:
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return folder


def shard_items(n: int, labelled: bool = True) -> list[tuple[np.ndarray, int | None]]:
    return [(noise_image(i, 11, 8), i % 4 if labelled else None) for i in range(n)]


def section(tmp_path: Path, kind: str) -> dict:
    """A data section of ``kind`` on a small set made in ``tmp_path``."""
    if kind == "folder":
        return {"kind": "images", "root": str(labelled_folder(tmp_path / "folder"))}
    if kind == "zip":
        folder = labelled_folder(tmp_path / "folder")
        return {"kind": "images", "root": str(zip_folder(folder, tmp_path / "images.zip"))}
    if kind == "webdataset":
        shards = write_shards(tmp_path / "shards", shard_items(23), per_shard=10)
        return {"kind": "webdataset", "root": str(shards)}
    if kind == "super_resolution":
        return {
            "kind": "super_resolution",
            "root": str(labelled_folder(tmp_path / "folder")),
            "scale": 2,
        }
    if kind.startswith("paired_ab"):  # side-by-side AB images, twice as wide as high
        for i in range(9):
            write_image(tmp_path / "facades" / "train" / f"{i}.png", noise_image(i, 6, 12))
        return {"kind": "paired", "root": str(tmp_path / "facades"), **_direction(kind)}
    if kind.startswith("paired_folders"):
        for i in range(9):
            for side in "AB":
                pixels = noise_image(i + (50 if side == "B" else 0), 7, 9)
                write_image(tmp_path / "pairs" / side / f"{i:02d}.png", pixels)
        return {"kind": "paired", "root": str(tmp_path / "pairs"), **_direction(kind)}
    if kind.startswith("unpaired"):
        for side, n in (("A", 7), ("B", 11)):  # domains of different sizes
            for i in range(n):
                pixels = noise_image(i + (50 if side == "B" else 0), 9, 8)
                write_image(tmp_path / "h2z" / f"train{side}" / f"{i:02d}.png", pixels)
        return {"kind": "unpaired", "root": str(tmp_path / "h2z"), **_direction(kind)}
    raise ValueError(kind)


def _direction(kind: str) -> dict:
    return {"direction": "b2a"} if kind.endswith("b2a") else {}


def pair(data: dict, **kw) -> tuple:
    """The in-memory and the streamed dataset of one data section."""
    base = {"image_size": 8, "flip": True, **data}
    memory = load_dataset(DataConfig(**base, **kw))
    streamed = open_dataset(DataConfig(**base, stream=True, workers=2, **kw))
    assert isinstance(streamed, StreamDataset)
    return memory, streamed


def same_batches(a: Loader, b: Loader, n: int) -> None:
    for step in range(n):
        x, y = a.next(), b.next()
        assert list(x) == list(y), step
        for key in x:
            assert x[key].dtype == y[key].dtype, (step, key)
            assert torch.equal(x[key], y[key]), f"batch {step}, {key}"


@pytest.mark.parametrize(
    "kind",
    [
        "folder",
        "zip",
        "webdataset",
        "super_resolution",
        "paired_ab",
        "paired_folders_b2a",
        "unpaired",
        "unpaired_b2a",
    ],
)
def test_streamed_batches_equal_in_memory_batches(tmp_path, kind):
    memory, streamed = pair(section(tmp_path, kind))
    assert streamed.info == memory.info and streamed.fingerprint == memory.fingerprint
    kw = {"seed": 5, "device": "cpu", "flip": True}
    # batches of 5 over 3 epochs of 21-27 items: batches straddle the epoch boundaries
    same_batches(Loader(memory, 5, **kw), make_loader(streamed, 5, **kw), 16)
    first, second = preview_batch(memory, 4, "cpu"), preview_batch(streamed, 4, "cpu")
    assert list(first) == list(second)
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_each_rank_streams_its_share_of_the_in_memory_order(tmp_path):
    memory, streamed = pair(section(tmp_path, "folder"))
    for rank in range(2):
        kw = {"seed": 1, "device": "cpu", "rank": rank, "world_size": 2}
        same_batches(Loader(memory, 4, **kw), StreamLoader(streamed, 4, **kw), 7)


def test_an_interrupted_streaming_loader_resumes_to_the_same_batches(tmp_path):
    _, streamed = pair(section(tmp_path, "webdataset"))
    kw = {"seed": 9, "device": "cpu", "flip": True}
    straight = StreamLoader(streamed, 6, **kw)
    interrupted = StreamLoader(streamed, 6, **kw)
    for _ in range(5):  # into the second epoch of 23 items
        interrupted.next()
    state = interrupted.state_dict()
    # the checkpoint holds plain ints, and the position of the batches consumed, not of those
    # the workers decoded ahead
    assert state["streams"] == [{"size": 23, "epoch": 1, "position": 7}]
    del interrupted
    resumed = StreamLoader(streamed, 6, **{**kw, "seed": 1234})  # the state carries the seed
    resumed.load_state_dict(torch.load(_saved(state), weights_only=True))
    _same_state("loader", state, resumed.state_dict(), "data position")
    for _ in range(5):
        straight.next()
    same_batches(straight, resumed, 6)


def test_workers_outlive_a_ctrl_c_sent_to_the_whole_process_group(tmp_path):
    # a terminal's Ctrl-C reaches the workers too; the trainer, not they, decides to stop
    import os
    import signal

    memory, streamed = pair(section(tmp_path, "folder"))
    straight, loader = (
        Loader(memory, 4, seed=0, device="cpu"),
        StreamLoader(streamed, 4, seed=0, device="cpu"),
    )
    same_batches(straight, loader, 2)  # one batch from each of the two workers: both set up
    for worker in loader._it._workers:  # torch's own handle on its worker processes
        os.kill(worker.pid, signal.SIGINT)
    same_batches(straight, loader, 12)


def _saved(state: dict) -> io.BytesIO:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return buf


def test_in_memory_and_streaming_checkpoints_resume_each_other(tmp_path):
    memory, streamed = pair(section(tmp_path, "zip"))
    kw = {"seed": 2, "device": "cpu", "flip": True}
    a = Loader(memory, 4, **kw)
    for _ in range(3):
        a.next()
    b = StreamLoader(streamed, 4, **kw)
    b.load_state_dict(a.state_dict())
    same_batches(a, b, 4)


def test_streaming_in_the_main_process_with_zero_workers(tmp_path):
    memory, _ = pair(section(tmp_path, "folder"))
    streamed = open_dataset(
        DataConfig(**section(tmp_path, "folder"), image_size=8, stream=True, workers=0)
    )
    kw = {"seed": 0, "device": "cpu"}
    same_batches(Loader(memory, 8, **kw), StreamLoader(streamed, 8, **kw), 4)


def test_exclude_classes_streams_the_other_classes(tmp_path):
    memory, streamed = pair(section(tmp_path, "folder"), exclude_classes=[1])
    assert len(streamed) == len(memory) == 7 + 9
    assert streamed.fingerprint == memory.fingerprint
    same_batches(
        Loader(memory, 5, seed=0, device="cpu"), StreamLoader(streamed, 5, seed=0, device="cpu"), 5
    )


# ---------------------------------------------------------------- when to stream


def test_a_set_too_large_for_memory_streams_and_says_so(tmp_path, monkeypatch, capsys):
    data = {**section(tmp_path, "folder"), "image_size": 8}
    assert not isinstance(open_dataset(DataConfig(**data)), StreamDataset)  # small: in memory
    monkeypatch.setattr(stream_module, "memory_budget", lambda: 1000)
    assert isinstance(open_dataset(DataConfig(**data)), StreamDataset)
    err = capsys.readouterr().err
    assert "24 images of 8x8" in err and "streaming" in err and "data.stream=false" in err
    assert not isinstance(open_dataset(DataConfig(**data, stream=False)), StreamDataset)


def test_stream_on_a_kind_held_in_memory_is_bad_input():
    with pytest.raises(BadInput, match="data.stream: data.kind=shapes"):
        open_dataset(DataConfig(kind="shapes", size=10, stream=True))


def test_streaming_workers_default_to_the_cores_per_process(monkeypatch):
    monkeypatch.setattr("genctl.threads.cores", lambda: 8)
    assert stream_module.default_workers(1) == 4 and stream_module.default_workers(4) == 2
    monkeypatch.setattr("genctl.threads.cores", lambda: 1)
    assert stream_module.default_workers(1) == 1


# ---------------------------------------------------------------- webdataset shards


def test_webdataset_groups_members_by_key_and_reads_cls_labels(tmp_path):
    items = shard_items(7)
    ds = load_dataset(
        DataConfig(kind="webdataset", root=str(write_shards(tmp_path, items, 3)), image_size=8)
    )
    assert ds.info.task == "conditional" and ds.info.class_names == ("0", "1", "2", "3")
    assert ds.labels.tolist() == [label for _, label in items]
    expected = load_dataset(
        DataConfig(kind="images", root=str(_as_folder(tmp_path / "f", items)), image_size=8)
    )
    assert torch.equal(ds.tensors["image"], expected.tensors["image"])


def _as_folder(folder: Path, items) -> Path:
    for i, (pixels, _) in enumerate(items):
        write_image(folder / f"{i:06d}.png", pixels)
    return folder


def test_webdataset_root_may_be_a_glob_or_one_shard(tmp_path):
    write_shards(tmp_path, shard_items(7, labelled=False), 3)
    one = load_dataset(DataConfig(kind="webdataset", root=str(tmp_path / "shard-001.tar")))
    some = load_dataset(DataConfig(kind="webdataset", root=str(tmp_path / "shard-00[01].tar")))
    assert len(one) == 3 and len(some) == 6 and one.labels is None


def test_webdataset_split_folders(tmp_path):
    write_shards(tmp_path / "train", shard_items(5), 5)
    write_shards(tmp_path / "test", shard_items(2), 5)
    cfg = {"kind": "webdataset", "root": str(tmp_path)}
    assert len(load_dataset(DataConfig(**cfg))) == 5
    assert len(load_dataset(DataConfig(**cfg, split="test"))) == 2


def test_a_compressed_shard_is_bad_input(tmp_path):
    write_shards(tmp_path, shard_items(2), 5)
    data = (tmp_path / "shard-000.tar").read_bytes()
    import gzip

    (tmp_path / "shard-000.tar").write_bytes(gzip.compress(data))
    with pytest.raises(BadInput, match="it is compressed"):
        load_dataset(DataConfig(kind="webdataset", root=str(tmp_path)))


def test_samples_without_a_label_beside_labelled_ones_are_bad_input(tmp_path):
    items = shard_items(4)
    items[2] = (items[2][0], None)
    write_shards(tmp_path, items, 4)
    with pytest.raises(BadInput, match="no .cls label"):
        load_dataset(DataConfig(kind="webdataset", root=str(tmp_path)))
    assert (
        load_dataset(DataConfig(kind="webdataset", root=str(tmp_path), labels=False)).labels is None
    )


def test_no_shards_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="no .tar shards"):
        load_dataset(DataConfig(kind="webdataset", root=str(tmp_path / "*.tar")))


# ---------------------------------------------------------------- data.resize


def test_pad_letterboxes_a_tall_image_onto_the_background(tmp_path):
    tall = np.zeros((8, 4, 3), dtype=np.uint8)  # black, twice as high as wide
    write_image(tmp_path / "tall.png", tall)
    cfg = {"kind": "images", "root": str(tmp_path), "image_size": 8, "background": (0, 0, 255)}
    padded = load_dataset(DataConfig(**cfg, resize="pad")).tensors["image"][0]
    assert (padded[:, :, 2:6] == 0).all()  # the image, centred
    assert (padded[2, :, :2] == 255).all() and (padded[2, :, 6:] == 255).all()  # blue bars
    assert (padded[:2, :, :2] == 0).all()
    cropped = load_dataset(DataConfig(**cfg)).tensors["image"][0]
    assert (cropped == 0).all()  # the default, center_crop, keeps a square of the image


def test_every_resize_mode_streams_as_it_decodes_in_memory(tmp_path):
    data = section(tmp_path, "folder")
    for mode in ("center_crop", "stretch", "pad"):
        memory, streamed = pair(data, resize=mode)
        kw = {"seed": 3, "device": "cpu"}
        same_batches(Loader(memory, 8, **kw), StreamLoader(streamed, 8, **kw), 3)
