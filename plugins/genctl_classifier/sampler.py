"""What a trained classifier offers genctl: logits and features of images, and a picture of a class.

A classifier makes no images of the data. ``sample()`` still answers the sampler contract
honestly: it draws, from noise, the input the classifier finds most typical of each class
(gradient ascent on the class's log-probability, "class model visualisation", Simonyan et al.
2014), which shows what the network has learned to look for; the training grid shows it, one
class after another. The classifier's real uses go through ``classify`` (accuracy, guidance)
and ``features`` (domain FID/KID): see genctl.classifiers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genctl.spec import DataInfo, labels_to_draw

from .config import ClassifierConfig, ClassifierSampleOptions


class ClassifierSampler:
    def __init__(self, config: ClassifierConfig, nets: dict[str, nn.Module], info: DataInfo):
        self.net = nets.get("classifier_ema", nets["classifier"])  # the EMA copy when kept
        self.info = info
        self.num_classes = info.num_classes
        self.class_names = tuple(info.class_names)

    def _device(self) -> torch.device:
        return next(self.net.parameters()).device

    def classify(self, images: Tensor) -> Tensor:
        """Logits N x num_classes of images in [-1, 1]; differentiable in ``images`` (guidance)."""
        return self.net(images)

    def features(self, images: Tensor) -> Tensor:
        """Penultimate features N x D of images in [-1, 1]: what domain FID/KID compare."""
        return self.net.features(images)

    def sample(
        self,
        n: int,
        options: ClassifierSampleOptions,
        generator: torch.Generator,
        inputs: Tensor | None = None,
        labels: Tensor | None = None,
    ) -> Tensor:
        labels = labels_to_draw(self, n, options, labels)
        c, s = self.info.channels, self.info.image_size
        x = (0.5 * torch.randn(n, c, s, s, generator=generator)).clamp(-1, 1)
        x = x.to(self._device())
        target = labels.to(x.device)
        with torch.enable_grad():
            for _ in range(options.steps):
                x.requires_grad_(True)
                logp = F.log_softmax(self.net(x).float(), dim=1)
                (grad,) = torch.autograd.grad(logp.gather(1, target[:, None]).sum(), x)
                # each image's step is scaled by its own gradient's RMS: images stay independent
                rms = grad.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt().clamp_min(1e-12)
                x = (x.detach() + options.step_size * grad / rms).clamp(-1, 1)
        return x.detach().add(1).div(2)
