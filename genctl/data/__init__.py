"""Datasets by kind, decoded once into uint8 tensors, and the loader that batches them.

``load_dataset(cfg)`` reads the recipe's ``data:`` section (:class:`DataConfig`) into a
:class:`Dataset`; a :class:`Loader` turns it into endless, resumable, sharded batches of float
images in [-1, 1] on the training device, keyed as :data:`genctl.spec.BATCH_KEYS` says;
``preview_batch`` gives a fixed batch for sample grids.
"""

from genctl.data.config import DataConfig
from genctl.data.dataset import Dataset, load_dataset
from genctl.data.loader import Loader, preview_batch, to_unit

__all__ = ["DataConfig", "Dataset", "Loader", "load_dataset", "preview_batch", "to_unit"]
