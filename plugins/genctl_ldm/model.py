"""The networks: ddpm's UNet on the latent's shape, and the frozen autoencoder's latent space.

``latent`` (:class:`LatentSpace`) holds what a checkpoint keeps of the first stage: the scale
factor measured on the training latents (Rombach et al. 2022, sec. 4.3.2 and appendix G:
``scale = 1 / std`` of the latents, so the diffusion sees unit variance) and the sha256 of the
autoencoder's weights it was measured with. The autoencoder itself is not a submodule: it is
loaded from its run whenever the model is (``model.autoencoder``), never trained and never saved
in this model's checkpoints; a missing or changed one is bad input naming it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from genctl_ddpm.model import UNet
from torch import Tensor, nn

from genctl.classifiers import weights_sha256
from genctl.errors import BadInput
from genctl.spec import DataInfo
from genctl_ldm.config import LDMConfig

HINT = "Train one with `genctl train recipes/vae-mnist-spatial.yaml` and give its run id as model.autoencoder."


@dataclass(frozen=True)
class FirstStage:
    """A trained autoencoder loaded by reference: the network with encode/decode, frozen."""

    ref: str  # what the recipe gave: a run id or a checkpoint path
    net: nn.Module
    sha256: str  # of the whole model's weights, as genctl.classifiers hashes them
    info: DataInfo  # the data it was trained on
    describe: str


def load_first_stage(ref: str) -> FirstStage:
    """The autoencoder of run (or checkpoint) ``ref``, on the CPU; memoised per file version."""
    p = Path(ref)
    stamp = p.stat().st_mtime_ns if p.is_file() else 0
    return _load(str(ref), stamp)


@lru_cache(maxsize=4)
def _load(ref: str, stamp: int) -> FirstStage:
    from genctl.resolve import find_checkpoint, load_model

    try:
        # building the autoencoder draws initial weights: from a forked generator, so that the
        # UNet's initialisation never depends on whether this process loaded it before
        with torch.random.fork_rng(devices=[]):
            model = load_model(find_checkpoint(run=ref), torch.device("cpu"))
    except BadInput as exc:
        raise BadInput(
            f"ldm: the autoencoder {ref} (model.autoencoder) cannot be loaded: {exc.message}",
            exc.hint or HINT,
        ) from None
    nets = [
        net
        for net in model.nets.values()
        if callable(getattr(net, "encode", None)) and callable(getattr(net, "decode", None))
    ]
    if not nets:
        raise BadInput(
            f"ldm: {ref} (model.autoencoder) is a {model.spec.name} model, which has no network "
            "with encode() and decode()",
            HINT,
        )
    net = nets[0].eval().requires_grad_(False)
    where = f"run {model.run_id}" if model.run_id else model.source
    return FirstStage(
        ref, net, weights_sha256(model.nets), model.info, f"{model.spec.name} {where}"
    )


def sha_tensor(sha256: str) -> Tensor:
    return torch.tensor(list(bytes.fromhex(sha256)), dtype=torch.uint8)


class LatentSpace(nn.Module):
    """Images <-> scaled latents through a frozen autoencoder that is not part of this module's
    state: ``encode(x) = scale * E(x)`` (the posterior mean for a VAE), ``decode(z) = D(z / scale)``.
    Buffers ``scale`` and ``autoencoder_sha256`` are what checkpoints keep."""

    def __init__(self, stage: FirstStage) -> None:
        super().__init__()
        # set through __dict__: not a submodule, so not in state_dict() and not trained
        self.__dict__["autoencoder"] = copy.deepcopy(stage.net)
        self.ref, self.describe, self.sha256 = stage.ref, stage.describe, stage.sha256
        shape = tuple(stage.net.latent_shape)
        self.latent_shape = (int(shape[0]), int(shape[1]), int(shape[2]))
        self.image_channels, self.image_size = stage.info.channels, stage.info.image_size
        self.register_buffer("scale", torch.ones(()))  # 1 / std of the training latents
        self.register_buffer("autoencoder_sha256", sha_tensor(stage.sha256))

    def _apply(self, fn, recurse=True):  # .to(device) and friends move the autoencoder too
        self.autoencoder._apply(fn)
        return super()._apply(fn, recurse)

    @property
    def device(self) -> torch.device:
        return self.scale.device

    @torch.no_grad()
    def encode_raw(self, images: Tensor) -> Tensor:
        """Images in [-1, 1] -> unscaled latents (the posterior mean)."""
        return self.autoencoder.encode(images.to(self.device)).float()

    def encode(self, images: Tensor) -> Tensor:
        return self.encode_raw(images) * self.scale

    def decode(self, z: Tensor) -> Tensor:
        """Scaled latents -> images in [-1, 1] (differentiable: guidance goes through it)."""
        return self.autoencoder.decode(z / self.scale)

    def check_autoencoder(self) -> None:
        """Bad input when the autoencoder loaded now is not the one this model was trained on."""
        stored = bytes(self.autoencoder_sha256.cpu().tolist()).hex()
        if stored != self.sha256:
            raise BadInput(
                f"ldm: the autoencoder {self.ref} (model.autoencoder) has changed since this "
                f"model was trained on its latents (weights sha256 {stored[:12]}, now "
                f"{self.sha256[:12]})",
                "Give model.autoencoder the run (or checkpoint) it was trained with, or train "
                "the latent model again on this autoencoder.",
            )


def build(config: LDMConfig, info: DataInfo) -> dict[str, nn.Module]:
    """``{"unet": UNet on the latent's shape, "latent": LatentSpace}``, checked against the data."""
    stage = load_first_stage(config.autoencoder)
    theirs = stage.info
    if (theirs.channels, theirs.image_size) != (info.channels, info.image_size):
        raise BadInput(
            f"ldm: the autoencoder {config.autoencoder} was trained on {theirs.channels}-channel "
            f"{theirs.image_size}px images, the data is {info.channels}-channel {info.image_size}px",
            "Use the autoencoder's data section (data.image_size, data.channels).",
        )
    space = LatentSpace(stage)
    c, h, w = space.latent_shape
    levels = len(config.channel_mults)
    if h != w or h < 2:
        raise BadInput(
            f"ldm: the autoencoder's latent is {c}x{h}x{w}; latent diffusion needs a square "
            "spatial latent",
            "Train the autoencoder with model.latent=spatial.",
        )
    if h % 2 ** (levels - 1):
        raise BadInput(
            f"ldm: the {c}x{h}x{w} latent cannot be halved {levels - 1} times "
            f"(model.channel_mults has {levels} levels)",
            f"Use fewer model.channel_mults (a side of {h} allows "
            f"{(h & -h).bit_length()} level(s)).",
        )
    if config.conditional and not info.num_classes:
        raise BadInput(
            "model.conditional=true needs class labels, but the data has none",
            "Use labelled data (mnist, cifar10, or a folder with one sub-folder per class).",
        )
    num_classes = info.num_classes if config.conditional else 0
    return {"unet": UNet(config, c, h, num_classes), "latent": space}
