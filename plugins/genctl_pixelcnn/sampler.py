"""Autoregressive sampling from a PixelCNN: one sub-pixel at a time, in raster order.

Each sub-pixel takes one forward pass (H x W x C passes per batch): slow, the price of an exact
likelihood. The output at row i sees only rows i - context_rows .. i (its kernels never look
down, and reach a fixed number of rows up), so each pass runs on that band of rows alone: the
same logits as on the whole image, at a fraction of the work.

All randomness is one uniform draw per sub-pixel, made up front from the given generator; a
level is picked by inverting the softmax's cumulative distribution at that draw (the same
law as ``torch.multinomial``, and the same images on any device up to float rounding).
"""

from __future__ import annotations

import torch
from pydantic import AliasChoices, Field
from torch import Tensor, nn
from tqdm.auto import tqdm

from genctl.errors import BadInput
from genctl.spec import DataInfo, Schema, labels_to_draw, noise

from .loss import image_nll, likelihood_protocol


class PixelCNNSamplerOptions(Schema):
    model_config = Schema.model_config | {"populate_by_name": True}

    temperature: float = Field(
        1.0,
        gt=0,
        description="divides the logits: below 1, sharper (cleaner, less varied) images",
    )
    class_: int | None = Field(
        None,
        alias="class",
        validation_alias=AliasChoices("class", "label"),  # label=: its first name
        ge=0,
        description="class to draw (conditional models); default: the classes genctl gives, "
        "image i of class i mod the number of classes",
    )


class PixelCNNSampler:
    generator_per_image = True  # sample() takes a list of n generators, one per image

    def __init__(self, config, nets: dict[str, nn.Module], data: DataInfo):
        self.net = nets.get("pixelcnn_ema", nets["pixelcnn"])
        self.size = data.image_size
        self.num_classes = self.net.num_classes  # 0: unconditional, takes no labels

    @torch.no_grad()
    def nll(self, images: Tensor, labels: Tensor | None, generator: torch.Generator) -> Tensor:
        """-log p(image) in nats of each uint8 image: genctl's ``eval/nll`` (exact)."""
        return image_nll(self.net, images, labels)

    def nll_protocol(self) -> dict[str, str]:
        return likelihood_protocol(self.net.levels, bool(self.net.num_classes))

    @torch.no_grad()
    def sample(
        self,
        n: int,
        options: PixelCNNSamplerOptions,
        generator: torch.Generator,
        inputs: Tensor | None = None,
        labels: Tensor | None = None,
    ) -> Tensor:
        """``n`` images; image i of class ``labels[i]`` for a conditional model."""
        if inputs is not None:
            raise BadInput(
                "pixelcnn draws images pixel by pixel from nothing; it takes no --input",
                "Drop --input.",
            )
        net = self.net
        device = next(net.parameters()).device
        labels = labels_to_draw(self, n, options, labels)
        labels = None if labels is None else labels.to(device)
        c, s, levels = net.channels, self.size, net.levels
        uniform = noise("rand", (n, c, s, s), generator, torch.float64).to(device)
        x = torch.full((n, c, s, s), -1.0, device=device)  # the network's input; filled in below
        was_training = net.training
        net.eval()
        try:
            with tqdm(total=s * s * c, desc="pixelcnn sampling", leave=False, disable=None) as bar:
                for i in range(s):
                    top = max(0, i - net.context_rows)
                    for j in range(s):
                        for ch in range(c):
                            logits = net(x[:, :, top : i + 1], labels)[:, :, ch, i - top, j]
                            probs = torch.softmax(logits.double() / options.temperature, dim=1)
                            below = probs.cumsum(1) < uniform[:, ch, i, j, None]
                            level = below.sum(1).clamp(max=levels - 1)
                            x[:, ch, i, j] = net.to_input(level)
                            bar.update(1)
        finally:
            net.train(was_training)
        return (x + 1) / 2
