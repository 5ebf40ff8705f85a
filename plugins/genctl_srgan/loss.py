"""SRGAN's objective (Ledig et al. 2017, section 2.2): perceptual loss = content + 1e-3 adversarial.

* Pre-training (the first ``model.pretrain_steps`` steps): the generator alone, on pixel MSE
  (SRResNet). The discriminator does not update.
* Then, generator step: ``content_weight * |vgg(G(lr)) - vgg(hr)|^2 + adversarial_weight *
  BCE(D(G(lr)), 1)``, with ``vgg`` the feature map of a frozen VGG-19 (``relu5_4``: VGG54);
  discriminator step: ``BCE(D(hr), 1) + BCE(D(G(lr)), 0)``.

With ``model.content_loss: mse`` the content loss is pixel MSE, and no VGG weights are needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genctl.errors import BadInput
from genctl.spec import DataInfo

from .config import SRGANConfig

VGG_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"  # torchvision's IMAGENET1K_V1
VGG_END = {"relu2_2": 9, "relu5_4": 36}  # layers of torchvision's vgg19().features to keep
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NO_WEIGHTS_HINT = (
    f"Download {VGG_URL} on a machine with internet and set model.vgg_weights=/path/to/"
    "vgg19-dcbb9e9d.pth (or put it in torch's cache, $TORCH_HOME/hub/checkpoints/), "
    "or train without VGG: model.content_loss=mse."
)


def download_vgg19_state() -> dict[str, Tensor]:
    """torchvision's ImageNet VGG-19 weights: from torch's cache, else downloaded."""
    from torchvision.models import VGG19_Weights

    return VGG19_Weights.IMAGENET1K_V1.get_state_dict(progress=False)


def read_vgg19_state(path: str | None) -> dict[str, Tensor]:
    if path is None:
        try:
            return download_vgg19_state()
        except Exception as exc:  # offline, proxy, corrupt cache: all end the same way
            raise BadInput(
                "model.content_loss=vgg needs VGG-19 weights, and none were given "
                f"(model.vgg_weights) or could be downloaded from torchvision ({exc})",
                NO_WEIGHTS_HINT,
            ) from None
    if not Path(path).is_file():
        raise BadInput(f"model.vgg_weights: no file at {path}", NO_WEIGHTS_HINT)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BadInput(
            f"model.vgg_weights: {path} is not a PyTorch weights file ({type(exc).__name__})",
            NO_WEIGHTS_HINT,
        ) from None
    if not isinstance(state, dict):
        raise BadInput(
            f"model.vgg_weights: {path} holds a {type(state).__name__}, not a state_dict"
        )
    return state


class VGGFeatures(nn.Module):
    """A frozen, truncated VGG-19 (torchvision's architecture) on images in [-1, 1]."""

    def __init__(self, weights: str | None, layer: str):
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers

        self.features = make_layers(cfgs["E"])[: VGG_END[layer]]  # vgg19().features, cut
        state = read_vgg19_state(weights)
        own = {
            k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")
        }
        where = weights or VGG_URL
        for key, param in self.features.state_dict().items():
            if key not in own:
                raise BadInput(
                    f"model.vgg_weights: {where} lacks features.{key}; is it a vgg19 state_dict?",
                    NO_WEIGHTS_HINT,
                )
            if own[key].shape != param.shape:
                raise BadInput(
                    f"model.vgg_weights: features.{key} in {where} has shape "
                    f"{tuple(own[key].shape)}, VGG-19 needs {tuple(param.shape)}",
                    NO_WEIGHTS_HINT,
                )
            param.copy_(own[key])
        self.features.requires_grad_(False).eval()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.features(((x + 1) / 2 - self.mean) / self.std)


class SRGANObjective:
    groups = {"g": ["generator"], "d": ["discriminator"]}

    def __init__(self, config: SRGANConfig, nets: dict[str, nn.Module], info: DataInfo):
        self.config = config
        self.generator = nets["generator"]
        self.discriminator = nets["discriminator"]
        # Not one of `nets`: frozen, so it has no optimizer and is not checkpointed.
        self.vgg = (
            VGGFeatures(config.vgg_weights, config.vgg_layer)
            if config.content_loss == "vgg"
            else None
        )
        # The generator step's output, reused detached by the discriminator step that follows.
        self._fake: Tensor | None = None

    def pretraining(self, step: int) -> bool:
        return step < self.config.pretrain_steps

    def schedule(self, step: int) -> list[str]:
        return ["g"] if self.pretraining(step) else ["g", "d"]

    def loss(
        self, group: str, batch: dict[str, Tensor], step: int
    ) -> tuple[Tensor, dict[str, Tensor]]:
        lr, hr = batch["lr"], batch["hr"]
        if group == "g":
            sr = self.generator(lr)
            mse = F.mse_loss(sr, hr)
            if self.pretraining(step):
                return mse, {"mse": mse.detach()}
            self._fake = sr.detach()
            adv = F.softplus(-self.discriminator(sr)).mean()  # = BCE(D(G(lr)), 1), on logits
            content = self.content(sr, hr) if self.vgg is not None else mse
            loss = content + self.config.adversarial_weight * adv
            return loss, {"content": content.detach(), "adv": adv.detach(), "mse": mse.detach()}

        if self._fake is None:  # no generator step before this one: upscale afresh
            with torch.no_grad():
                self._fake = self.generator(lr)
        fake, self._fake = self._fake, None
        real_score, fake_score = self.discriminator(hr), self.discriminator(fake)
        loss = F.softplus(-real_score).mean() + F.softplus(fake_score).mean()
        return loss, {
            "d_real": torch.sigmoid(real_score).mean().detach(),
            "d_fake": torch.sigmoid(fake_score).mean().detach(),
        }

    def content(self, sr: Tensor, hr: Tensor) -> Tensor:
        """VGG content loss: MSE between feature maps, scaled by ``content_weight``."""
        if self.vgg.mean.device != hr.device:
            self.vgg.to(hr.device)
        with torch.no_grad():
            target = self.vgg(hr)
        return self.config.content_weight * F.mse_loss(self.vgg(sr), target)

    def state_dict(self) -> dict[str, Any]:
        return {}  # the phase follows from the step; the VGG is fixed

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._fake = None
