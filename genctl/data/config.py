"""The schema of a recipe's ``data:`` section."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from genctl.spec import Schema

DataKind = Literal[
    "shapes", "images", "webdataset", "mnist", "cifar10", "paired", "unpaired", "super_resolution"
]


class DataConfig(Schema):
    kind: DataKind
    # a folder or a .zip (images); a folder or glob of .tar shards (webdataset); the dataset
    # folder otherwise
    root: str | None = None
    split: Literal["train", "test"] = "train"
    image_size: int = Field(32, gt=0)  # square side after resize (HR side for super_resolution)
    channels: Literal[1, 3] = 3
    labels: bool = True  # class sub-folders become labels when present
    limit: int | None = Field(None, gt=0)  # use at most this many images (the first, sorted)
    # drop the images of these class indices (labelled image kinds): train on the other classes,
    # e.g. MNIST without one digit, which anomaly detection then scores as the anomalies
    exclude_classes: list[int] = Field([], max_length=1000)
    # non-square images: crop the centre square, stretch the whole image, or pad it to a square
    # with the background colour (letterbox); then resize to image_size
    resize: Literal["center_crop", "stretch", "pad"] = "center_crop"
    background: tuple[int, int, int] = (255, 255, 255)  # RGBA is flattened onto this colour
    flip: bool = False  # random horizontal flip, applied on the batch
    direction: Literal["a2b", "b2a"] = "a2b"  # paired/unpaired: which side is the input
    scale: int = Field(4, gt=1)  # super_resolution: HR side / LR side
    size: int = Field(10000, gt=0)  # shapes: number of generated images
    download: bool = False  # mnist/cifar10: download when absent (needs internet)
    cache: bool = True  # keep decoded uint8 tensors in a cache on disk
    # decode on the fly in DataLoader worker processes instead of once into memory; unset: stream
    # when the decoded set would not fit comfortably (see genctl.data.stream.should_stream)
    stream: bool | None = None
    workers: int | None = Field(None, ge=0)  # streaming decode processes (0: in this process)
