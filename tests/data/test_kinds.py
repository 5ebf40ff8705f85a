"""Every data kind on the real datasets (../shared/data) and on small files made here."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from genctl.data import DataConfig, Loader, load_dataset, preview_batch
from genctl.data.decode import to_channels
from tests.data.files import noise_image, write_image, zip_folder


def load(**kw):
    return load_dataset(DataConfig(**kw))


# ---------------------------------------------------------------- shapes


def test_shapes_are_labelled_circle_square_triangle():
    ds = load(kind="shapes", size=300, image_size=16)
    assert ds.tensors["image"].shape == (300, 3, 16, 16)
    assert ds.tensors["image"].dtype == torch.uint8
    assert ds.info.class_names == ("circle", "square", "triangle")
    assert ds.info.task == "conditional" and ds.info.num_classes == 3
    assert sorted(ds.labels.unique().tolist()) == [0, 1, 2]


def test_shapes_are_the_same_every_time_and_differ_between_splits(data_cache):
    first = load(kind="shapes", size=50, image_size=16, cache=False)
    again = load(kind="shapes", size=50, image_size=16, cache=False)
    test = load(kind="shapes", size=50, image_size=16, split="test", cache=False)
    assert torch.equal(first.tensors["image"], again.tensors["image"])
    assert torch.equal(first.labels, again.labels)
    assert not torch.equal(first.tensors["image"], test.tensors["image"])


def test_shapes_fill_part_of_a_plain_background():
    images = load(kind="shapes", size=100, image_size=32).tensors["image"]
    background = (images == 255).all(dim=1)  # white pixels per image
    share = background.float().mean(dim=(1, 2))
    assert (share > 0.5).all() and (share < 0.97).all()
    assert background[:, 0, 0].all()  # the shape never touches a corner


def test_shapes_without_labels():
    ds = load(kind="shapes", size=20, image_size=8, labels=False)
    assert ds.labels is None and ds.info.task == "unconditional" and ds.info.num_classes == 0


# ---------------------------------------------------------------- MNIST and CIFAR-10


def test_mnist_reads_the_local_idx_files(shared_data):
    ds = load(kind="mnist", root=str(shared_data / "mnist"), limit=10, image_size=28, channels=1)
    assert ds.tensors["image"].shape == (10, 1, 28, 28)
    assert ds.labels.tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]  # the official first ten
    assert ds.info.class_names == tuple("0123456789")


def test_mnist_test_split_is_resized_and_made_rgb(shared_data):
    ds = load(kind="mnist", root=str(shared_data / "mnist"), split="test", limit=10, image_size=16)
    assert ds.tensors["image"].shape == (10, 3, 16, 16)
    assert ds.labels.tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    img = ds.tensors["image"]
    assert torch.equal(img[:, 0], img[:, 1]) and torch.equal(img[:, 1], img[:, 2])


def test_mnist_in_torchvision_layout(shared_data, tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(shared_data / "mnist" / name, raw / name)
    flat = load(
        kind="mnist",
        root=str(shared_data / "mnist"),
        split="test",
        limit=5,
        image_size=28,
        channels=1,
    )
    nested = load(
        kind="mnist", root=str(tmp_path), split="test", limit=5, image_size=28, channels=1
    )
    assert torch.equal(flat.tensors["image"], nested.tensors["image"])


def test_cifar10_zip_keeps_every_class_under_a_limit(shared_data):
    ds = load(kind="cifar10", root=str(shared_data / "cifar10"), limit=20, image_size=32)
    assert ds.tensors["image"].shape == (20, 3, 32, 32)
    assert ds.info.class_names[:3] == ("airplane", "automobile", "bird")
    assert ds.labels.tolist() == list(range(10)) * 2


def test_cifar10_test_split(shared_data):
    ds = load(
        kind="cifar10", root=str(shared_data / "cifar10"), split="test", limit=10, image_size=8
    )
    assert ds.tensors["image"].shape == (10, 3, 8, 8) and ds.info.num_classes == 10


# ---------------------------------------------------------------- image folders and zips


def test_rgba_is_flattened_onto_the_background(shared_data):
    root = str(shared_data / "pokemon")
    white = load(kind="images", root=root, limit=8, image_size=16).tensors["image"]
    black = load(kind="images", root=root, limit=8, image_size=16, background=(0, 0, 0)).tensors[
        "image"
    ]
    assert (white[:, :, 0, 0] == 255).all()  # the transparent corner shows the background
    assert (black[:, :, 0, 0] == 0).all()


def test_grayscale_is_the_luma_of_rgb(shared_data):
    root = str(shared_data / "celeba" / "celeba_10k.zip")
    rgb = load(kind="images", root=root, limit=6, image_size=16).tensors["image"]
    gray = load(kind="images", root=root, limit=6, image_size=16, channels=1).tensors["image"]
    assert gray.shape == (6, 1, 16, 16)
    diff = (gray.float() - to_channels(rgb, 1).float()).abs()
    assert diff.mean() < 2.0


def test_zip_and_folder_give_the_same_tensors(shared_data, tmp_path):
    folder = tmp_path / "pokemon"
    folder.mkdir()
    for name in ("001.png", "004.png", "007.png", "025.png"):
        shutil.copy(shared_data / "pokemon" / name, folder / name)
    archive = zip_folder(folder, tmp_path / "pokemon.zip")
    a = load(kind="images", root=str(folder), image_size=16).tensors["image"]
    b = load(kind="images", root=str(archive), image_size=16).tensors["image"]
    assert a.shape == (4, 3, 16, 16) and torch.equal(a, b)


def test_class_subfolders_become_labels(tmp_path):
    for i in range(3):
        write_image(tmp_path / "dog" / f"{i}.png", noise_image(i))
        write_image(tmp_path / "cat" / f"{i}.png", noise_image(10 + i))
    ds = load(kind="images", root=str(tmp_path), image_size=8)
    assert ds.info.class_names == ("cat", "dog")
    assert ds.labels.tolist() == [0, 1, 0, 1, 0, 1]  # classes interleaved, so limits keep both
    assert ds.info.task == "conditional"


def test_labels_false_ignores_class_subfolders(tmp_path):
    for i in range(2):
        write_image(tmp_path / "dog" / f"{i}.png", noise_image(i))
        write_image(tmp_path / "cat" / f"{i}.png", noise_image(10 + i))
    ds = load(kind="images", root=str(tmp_path), image_size=8, labels=False)
    assert ds.labels is None and len(ds) == 4 and ds.info.task == "unconditional"


def test_limit_keeps_the_first_files_in_name_order(tmp_path):
    for i in (3, 1, 2, 0):
        write_image(tmp_path / f"{i}.png", np.full((4, 4, 3), 10 * i, dtype=np.uint8))
    ds = load(kind="images", root=str(tmp_path), image_size=4, limit=2)
    assert ds.tensors["image"][:, 0, 0, 0].tolist() == [0, 10]


def _stripes(height: int, width: int) -> np.ndarray:
    """Left third red, middle green, right third blue."""
    img = np.zeros((height, width, 3), dtype=np.uint8)
    third = width // 3
    img[:, :third, 0] = img[:, third : 2 * third, 1] = img[:, 2 * third :, 2] = 255
    return img


def test_wide_images_are_center_cropped_or_stretched(tmp_path):
    write_image(tmp_path / "wide.png", _stripes(10, 30))
    crop = load(kind="images", root=str(tmp_path), image_size=8).tensors["image"][0]
    stretch = load(kind="images", root=str(tmp_path), image_size=9, resize="stretch").tensors[
        "image"
    ][0]
    assert (crop[1] == 255).all() and (crop[0] == 0).all() and (crop[2] == 0).all()
    assert stretch[0, :, 0].min() > 200 and stretch[2, :, -1].min() > 200


def test_images_split_folders(tmp_path):
    write_image(tmp_path / "train" / "a.png", noise_image(0))
    write_image(tmp_path / "test" / "b.png", noise_image(1))
    write_image(tmp_path / "test" / "c.png", noise_image(2))
    assert len(load(kind="images", root=str(tmp_path), image_size=8)) == 1
    assert len(load(kind="images", root=str(tmp_path), image_size=8, split="test")) == 2


# ---------------------------------------------------------------- paired, unpaired, super-resolution


def test_paired_side_by_side_images_split_into_input_and_target(shared_data):
    root = str(shared_data / "facades")
    a2b = load(kind="paired", root=root, limit=3, image_size=16)
    b2a = load(kind="paired", root=root, limit=3, image_size=16, direction="b2a")
    assert a2b.info.task == "paired" and set(a2b.tensors) == {"input", "target"}
    assert a2b.tensors["input"].shape == (3, 3, 16, 16)
    assert torch.equal(a2b.tensors["input"], b2a.tensors["target"])
    assert a2b.fingerprint != b2a.fingerprint  # real-data statistics differ by direction
    assert not torch.equal(a2b.tensors["input"], a2b.tensors["target"])
    # facades: the photo on the left, the label map (mostly saturated blue) on the right
    assert a2b.tensors["target"][:, 2].float().mean() > a2b.tensors["input"][:, 2].float().mean()


def test_paired_a_and_b_folders_match_side_by_side_files(tmp_path):
    for i in range(3):
        left, right = noise_image(i), noise_image(100 + i)
        write_image(tmp_path / "ab" / "train" / f"{i}.png", np.concatenate([left, right], axis=1))
        write_image(tmp_path / "folders" / "A" / f"{i}.png", left)
        write_image(tmp_path / "folders" / "B" / f"{i}.png", right)
    ab = load(kind="paired", root=str(tmp_path / "ab"), image_size=8)
    folders = load(kind="paired", root=str(tmp_path / "folders"), image_size=8)
    assert torch.equal(ab.tensors["input"], folders.tensors["input"])
    assert torch.equal(ab.tensors["target"], folders.tensors["target"])


def test_unpaired_domains_keep_their_own_lengths(shared_data):
    ds = load(kind="unpaired", root=str(shared_data / "horse2zebra"), split="test", image_size=8)
    assert ds.info.task == "unpaired"
    assert len(ds.tensors["a"]) == 120 and len(ds.tensors["b"]) == 140 and len(ds) == 140
    batch = Loader(ds, 16, seed=0, device="cpu").next()
    assert batch["a"].shape == batch["b"].shape == (16, 3, 8, 8)


def test_unpaired_b2a_swaps_the_domains(shared_data):
    root = str(shared_data / "horse2zebra")
    a2b = load(kind="unpaired", root=root, split="test", limit=4, image_size=8)
    b2a = load(kind="unpaired", root=root, split="test", limit=4, image_size=8, direction="b2a")
    assert torch.equal(a2b.tensors["a"], b2a.tensors["b"])


def test_super_resolution_makes_lr_by_downscaling_hr(shared_data):
    ds = load(
        kind="super_resolution",
        root=str(shared_data / "celeba" / "celeba_10k.zip"),
        limit=8,
        image_size=32,
        scale=4,
    )
    assert ds.info.task == "super_resolution" and ds.info.scale == 4
    batch = preview_batch(ds, 8, "cpu")
    assert batch["hr"].shape == (8, 3, 32, 32) and batch["lr"].shape == (8, 3, 8, 8)
    pooled = torch.nn.functional.avg_pool2d(batch["hr"], 4)
    assert (batch["lr"] - pooled).abs().mean() < 0.05
    assert batch["lr"].min() >= -1 and batch["lr"].max() <= 1


# ---------------------------------------------------------------- the cache


def test_cache_hit_gives_identical_tensors_without_decoding(shared_data, data_cache, monkeypatch):
    cfg = DataConfig(kind="images", root=str(shared_data / "pokemon"), limit=6, image_size=16)
    first = load_dataset(cfg)
    assert len(list(data_cache.glob("images-train-*.pt"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr("genctl.data.dataset.decode_all", no_decoding)
    again = load_dataset(cfg)
    assert torch.equal(first.tensors["image"], again.tensors["image"])
    assert again.fingerprint == first.fingerprint


def test_cache_is_keyed_by_files_and_settings(tmp_path, data_cache):
    folder = tmp_path / "imgs"
    write_image(folder / "a.png", noise_image(0))
    first = load(kind="images", root=str(folder), image_size=8)
    other_size = load(kind="images", root=str(folder), image_size=4)
    write_image(folder / "a.png", noise_image(1, 13, 13))  # new content, size and mtime
    changed = load(kind="images", root=str(folder), image_size=8)
    assert len({first.fingerprint, other_size.fingerprint, changed.fingerprint}) == 3
    assert not torch.equal(first.tensors["image"], changed.tensors["image"])
    assert len(list(data_cache.glob("*.pt"))) == 3


def test_a_rewritten_zip_is_decoded_again(tmp_path):
    write_image(tmp_path / "v1" / "a.png", noise_image(0))
    write_image(tmp_path / "v2" / "a.png", noise_image(1))
    archive = tmp_path / "set.zip"
    first = load(kind="images", root=str(zip_folder(tmp_path / "v1", archive)), image_size=8)
    second = load(kind="images", root=str(zip_folder(tmp_path / "v2", archive)), image_size=8)
    assert not torch.equal(first.tensors["image"], second.tensors["image"])


def test_cache_false_writes_nothing(data_cache):
    load(kind="shapes", size=10, image_size=8, cache=False)
    assert not data_cache.exists() or not any(data_cache.iterdir())


def test_a_damaged_cache_entry_is_decoded_again(tmp_path, data_cache):
    write_image(tmp_path / "imgs" / "a.png", noise_image(0))
    first = load(kind="images", root=str(tmp_path / "imgs"), image_size=8)
    (entry,) = data_cache.glob("*.pt")
    entry.write_bytes(b"not a torch file")
    again = load(kind="images", root=str(tmp_path / "imgs"), image_size=8)
    assert torch.equal(first.tensors["image"], again.tensors["image"])


@pytest.mark.parametrize("kind", ["images", "super_resolution"])
def test_webp_jpeg_and_bmp_are_read(tmp_path, kind):
    pixels = np.full((8, 8, 3), 200, dtype=np.uint8)
    for suffix in ("webp", "jpg", "jpeg", "bmp", "png"):
        write_image(tmp_path / f"x.{suffix}", pixels)
    (tmp_path / "notes.txt").write_text("not an image")
    ds = load(kind=kind, root=str(tmp_path), image_size=8, scale=2)
    images = next(iter(ds.tensors.values()))
    assert len(images) == 5 and (images.float() - 200).abs().max() <= 3
