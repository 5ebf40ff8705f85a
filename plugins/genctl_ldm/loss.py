"""The objective: ddpm's loss on latents, which it makes once from the data (and caches).

Before training the trainer hands the decoded dataset to :meth:`prepare_data`: every image goes
through the frozen encoder once (the posterior mean), the latents are cached on disk beside the
decoded images (``genctl.data.cache``), keyed by the autoencoder's weights and the data's
fingerprint, so a second run (or a resume) on the same data and autoencoder encodes nothing.
The scale factor is measured on them (``1 / std``) and kept in the ``latent`` network's buffer,
so every checkpoint holds it. The loader then batches the scaled latents instead of images,
and the loss is ddpm's on them.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from genctl_ddpm.loss import DiffusionObjective
from torch import Tensor, nn
from tqdm.auto import tqdm

from genctl.data import Dataset
from genctl.data import cache as data_cache
from genctl.errors import BadInput
from genctl.spec import DataInfo
from genctl_ldm.config import LDMConfig
from genctl_ldm.model import LatentSpace, sha_tensor

log = logging.getLogger(__name__)

LATENT_FORMAT = 1  # bump when the latents of the same images and autoencoder change
CHUNK = 256  # images per encoder call


def encode_all(space: LatentSpace, images: Tensor, desc: str = "encoding latents") -> Tensor:
    """Unscaled latents (float32, CPU) of uint8 N x C x H x W images, in chunks."""
    out = []
    for i in tqdm(range(0, len(images), CHUNK), desc=desc, leave=False, disable=None):
        x = images[i : i + CHUNK].to(space.device).float().div_(127.5).sub_(1.0)
        out.append(space.encode_raw(x).cpu())
    return torch.cat(out)


def cached_latents(space: LatentSpace, dataset: Dataset) -> Tensor:
    """The unscaled latents of ``dataset``'s images, from the cache when it has them."""
    name = None
    if dataset.fingerprint:
        key = data_cache.fingerprint(
            "ldm-latents", LATENT_FORMAT, space.sha256, dataset.fingerprint
        )
        name = f"latents-{key}"
        hit = data_cache.load(name)
        if hit is not None and tuple(hit["latents"].shape[1:]) == space.latent_shape:
            if len(hit["latents"]) == len(dataset.tensors["image"]):
                return hit["latents"]
    latents = encode_all(space, dataset.tensors["image"])
    if name is not None:
        data_cache.save(name, {"latents": latents, "autoencoder": space.describe})
    return latents


class LatentDiffusionObjective(DiffusionObjective):
    """ddpm's objective (one group, ``unet``) on the scaled latents :meth:`prepare_data` makes."""

    def __init__(self, config: LDMConfig, nets: dict[str, nn.Module], info: DataInfo) -> None:
        super().__init__(config, nets, info)
        self.space: LatentSpace = nets["latent"]

    def prepare_data(self, dataset: Dataset) -> Dataset:
        """The dataset of scaled latents the loader batches (``image``: float N x c x h x w)."""
        tensors = getattr(dataset, "tensors", None)
        if not tensors or "image" not in tensors:
            raise BadInput(
                "ldm: latent diffusion encodes the images once before training and needs them "
                "decoded into memory",
                "Use an image data kind (mnist, cifar10, images, shapes) without data.stream.",
            )
        latents = cached_latents(self.space, dataset)
        std = latents.std().item()
        if not std > 0:
            raise BadInput(f"ldm: the latents of {self.space.ref} are constant (std {std})")
        with torch.no_grad():
            self.space.scale.fill_(1.0 / std)
            self.space.autoencoder_sha256.copy_(sha_tensor(self.space.sha256))
        log.info("ldm: latent scale factor 1/std = %.4f over %d latents", 1 / std, len(latents))
        fingerprint = f"{dataset.fingerprint}-latents-{self.space.sha256[:16]}"
        return Dataset({"image": latents / std}, dataset.labels, dataset.info, fingerprint)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # the trainer loads the networks first: their buffers are the checkpoint's by now
        self.space.check_autoencoder()
        super().load_state_dict(state)
