"""Bad data is reported as BadInput naming the path and the layout expected, never a traceback."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from genctl.data import DataConfig, load_dataset
from genctl.errors import BadInput
from tests.data.files import noise_image, write_image


def load(**kw):
    return load_dataset(DataConfig(**kw))


def test_missing_root_names_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(BadInput, match="nowhere.*does not exist") as err:
        load(kind="images", root=str(missing))
    assert "folder or a .zip" in err.value.hint


@pytest.mark.parametrize(
    "kind", ["images", "mnist", "cifar10", "paired", "unpaired", "super_resolution"]
)
def test_kinds_that_read_files_need_a_root(kind):
    with pytest.raises(BadInput, match="data.root is required"):
        load(kind=kind)


def test_empty_folder(tmp_path):
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(BadInput, match="no images .* found in"):
        load(kind="images", root=str(tmp_path))


def test_corrupt_image_is_named(tmp_path):
    write_image(tmp_path / "good.png", noise_image(0))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    with pytest.raises(BadInput, match=r"cannot read image .*broken\.png"):
        load(kind="images", root=str(tmp_path), image_size=8)


def test_truncated_jpeg_is_named(tmp_path):
    path = write_image(tmp_path / "cut.jpg", noise_image(0, 64, 64), quality=95)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(BadInput, match=r"cannot read image .*cut\.jpg"):
        load(kind="images", root=str(tmp_path), image_size=8)


def test_zero_byte_image_is_named_as_empty(tmp_path):
    write_image(tmp_path / "good.png", noise_image(0))
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(BadInput, match=r"cannot read image .*empty\.png: the file is empty") as err:
        load(kind="images", root=str(tmp_path), image_size=8)
    assert "interrupted copy" in err.value.hint


def test_unidentified_image_message_names_no_python_object(tmp_path):
    (tmp_path / "noise.png").write_bytes(b"definitely not an image")
    with pytest.raises(BadInput, match=r"noise\.png: not an image format Pillow knows") as err:
        load(kind="images", root=str(tmp_path), image_size=8)
    assert "BytesIO" not in str(err.value)


def test_truncated_png_is_named(tmp_path):
    path = write_image(tmp_path / "cut.png", noise_image(0, 64, 64))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(BadInput, match=r"cannot read image .*cut\.png: image file is truncated"):
        load(kind="images", root=str(tmp_path), image_size=8)


def test_corrupt_image_inside_a_zip_is_named(tmp_path):
    archive = tmp_path / "set.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("imgs/bad.jpg", b"garbage")
    with pytest.raises(BadInput, match=r"set\.zip:imgs/bad\.jpg"):
        load(kind="images", root=str(archive), image_size=8)


def test_a_file_that_is_not_a_zip(tmp_path):
    (tmp_path / "data.tar").write_bytes(b"not a zip")
    with pytest.raises(BadInput, match="not a zip archive"):
        load(kind="images", root=str(tmp_path / "data.tar"))


def test_images_beside_class_folders(tmp_path):
    write_image(tmp_path / "cat" / "0.png", noise_image(0))
    write_image(tmp_path / "dog" / "0.png", noise_image(1))
    write_image(tmp_path / "stray.png", noise_image(2))
    with pytest.raises(BadInput, match="stray.png.*class") as err:
        load(kind="images", root=str(tmp_path), image_size=8)
    assert "labels=false" in err.value.hint


def test_test_split_that_does_not_exist(tmp_path):
    write_image(tmp_path / "a.png", noise_image(0))
    with pytest.raises(BadInput, match="no test/ folder"):
        load(kind="images", root=str(tmp_path), split="test")


def test_paired_image_that_is_not_twice_as_wide(tmp_path):
    write_image(tmp_path / "train" / "1.png", noise_image(0, 10, 15))
    with pytest.raises(BadInput, match=r"1\.png is 15x10.*twice as wide as high") as err:
        load(kind="paired", root=str(tmp_path), image_size=8)
    assert "A/ and B/" in err.value.hint


def test_paired_a_and_b_names_that_do_not_match(tmp_path):
    for name in ("x1", "x2", "x3"):
        write_image(tmp_path / "train" / "A" / f"{name}.png", noise_image(0))
    for name in ("x1", "y2", "y3"):
        write_image(tmp_path / "train" / "B" / f"{name}.png", noise_image(0))
    with pytest.raises(BadInput, match=r"do not match.*x2, x3.*y2, y3"):
        load(kind="paired", root=str(tmp_path), image_size=8)


def test_paired_without_the_split_folder(tmp_path):
    write_image(tmp_path / "pairs" / "1.png", noise_image(0, 8, 16))
    write_image(tmp_path / "other" / "1.png", noise_image(0, 8, 16))
    with pytest.raises(BadInput, match="no train/ folder") as err:
        load(kind="paired", root=str(tmp_path))
    assert "side-by-side" in err.value.hint


def test_unpaired_without_train_a_and_train_b(tmp_path):
    write_image(tmp_path / "trainA" / "1.png", noise_image(0))
    write_image(tmp_path / "horses" / "1.png", noise_image(0))
    with pytest.raises(BadInput, match="no trainB folder") as err:
        load(kind="unpaired", root=str(tmp_path))
    assert "trainA/ and trainB/" in err.value.hint


def test_mnist_files_absent(tmp_path):
    with pytest.raises(BadInput, match=r"MNIST train files not found.*MNIST/raw") as err:
        load(kind="mnist", root=str(tmp_path))
    assert "data.download=true" in err.value.hint


def test_mnist_file_damaged(tmp_path):
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (tmp_path / name).write_bytes(b"not gzip")
    with pytest.raises(BadInput, match="cannot read MNIST file .*train-images"):
        load(kind="mnist", root=str(tmp_path))


def test_cifar10_files_absent(tmp_path):
    with pytest.raises(
        BadInput, match=r"CIFAR-10 test data not found.*cifar-10-batches-py.*test\.zip"
    ) as err:
        load(kind="cifar10", root=str(tmp_path), split="test")
    assert "data.download=true" in err.value.hint


def test_super_resolution_size_must_divide_by_the_scale(tmp_path):
    write_image(tmp_path / "a.png", np.zeros((8, 8, 3), dtype=np.uint8))
    with pytest.raises(BadInput, match="not divisible by data.scale=4"):
        load(kind="super_resolution", root=str(tmp_path), image_size=30, scale=4)
