"""Datasets by kind, decoded once into uint8 tensors, and the loader that batches them.

``load_dataset(cfg)`` reads the recipe's ``data:`` section (:class:`DataConfig`) into a
:class:`Dataset`; a :class:`Loader` turns it into endless, resumable, sharded batches of float
images in [-1, 1] on the training device, keyed as :data:`genctl.spec.BATCH_KEYS` says;
``preview_batch`` gives a fixed batch for sample grids. ``open_dataset`` and ``make_loader``
do the same for training, streaming from the files (:mod:`genctl.data.stream`) when the set is
too large for memory or the recipe says ``data.stream: true``.
"""

from genctl.data.config import DataConfig
from genctl.data.dataset import Dataset, load_dataset, open_dataset
from genctl.data.loader import Loader, preview_batch, to_unit
from genctl.data.stream import StreamDataset, StreamLoader


def make_loader(dataset: Dataset | StreamDataset, batch_size: int, **kw) -> Loader:
    """The Loader for ``dataset``: batches gathered in memory, or decoded by worker processes."""
    cls = StreamLoader if isinstance(dataset, StreamDataset) else Loader
    return cls(dataset, batch_size, **kw)


__all__ = [
    "DataConfig",
    "Dataset",
    "Loader",
    "StreamDataset",
    "StreamLoader",
    "load_dataset",
    "make_loader",
    "open_dataset",
    "preview_batch",
    "to_unit",
]
