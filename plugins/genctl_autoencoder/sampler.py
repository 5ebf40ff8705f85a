"""Images from a trained autoencoder or VAE: new samples, or reconstructions of --input images."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from genctl.errors import BadInput
from genctl.spec import DataInfo, Schema, noise

from .loss import gaussian_kl, likelihood_protocol, negative_elbo


class AutoencoderSamplerOptions(Schema):
    mode: Literal["auto", "sample", "reconstruct"] = Field(
        "auto",
        description="sample: decode latents drawn from the prior; reconstruct: encode and decode "
        "the --input images; auto: reconstruct when --input is given, else sample",
    )
    temperature: float = Field(
        1.0,
        gt=0,
        description="sample: scale of the latent noise around the prior mean; below 1, more "
        "typical images, less variety",
    )


class AutoencoderSampler:
    """Decodes prior latents, or reconstructs inputs through the posterior mean."""

    chunk = 256  # images per forward pass, to bound memory for large n
    generator_per_image = True  # sample() takes a list of n generators, one per image

    def __init__(self, config, nets: dict[str, nn.Module], data: DataInfo):
        self.net = nets.get("autoencoder_ema", nets["autoencoder"])  # EMA weights when kept
        self.name = "vae" if self.net.variational else "autoencoder"

    @torch.no_grad()
    def sample(
        self,
        n: int,
        options: AutoencoderSamplerOptions,
        generator: torch.Generator,
        inputs: Tensor | None = None,
    ) -> Tensor:
        mode = options.mode
        if mode == "auto":
            mode = "sample" if inputs is None else "reconstruct"
        if mode == "reconstruct":
            if inputs is None:
                raise BadInput(
                    f"{self.name}: mode=reconstruct needs images to reconstruct",
                    "Give them with --input FILE_OR_FOLDER, or use mode=sample.",
                )
            return self.reconstruct(inputs)
        if inputs is not None:
            raise BadInput(
                f"{self.name}: mode=sample draws new images and would ignore --input",
                "Drop --input, or use mode=reconstruct (or mode=auto) to reconstruct the inputs.",
            )
        return self._decode(self.latents(n, generator, options.temperature))

    def latents(self, n: int, generator: torch.Generator, temperature: float = 1.0) -> Tensor:
        """``n`` latents from the prior (see ``Autoencoder.prior``), noise drawn on the CPU."""
        mean, std = self.net.prior()
        eps = noise("randn", (n, *self.net.latent_shape), generator).to(mean.device)
        return mean + temperature * std * eps

    @torch.no_grad()
    def reconstruct(self, inputs: Tensor) -> Tensor:
        """Inputs in [-1, 1] -> their reconstructions in [0, 1], through the posterior mean."""
        device = self.net.latent_mean.device
        z = torch.cat(
            [
                self.net.encode(inputs[i : i + self.chunk].to(device))
                for i in range(0, len(inputs), self.chunk)
            ]
        )
        return self._decode(z)

    @torch.no_grad()
    def anomaly_scores(self, images: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """Per-image anomaly scores of uint8 images (higher: more anomalous), for genctl score
        and the ``auroc`` metric: ``mse``, the mean squared error per pixel on the [0, 1] scale
        of the reconstruction through the posterior mean, and ``nmse``, the same divided by the
        image's mean square, so that how much ink a digit has does not decide its score
        (``generator`` unused here)."""
        x = images.float() / 255
        recon = self.reconstruct(x * 2 - 1).to(x.device)
        mse = (recon - x).square().flatten(1).mean(1)
        energy = x.square().flatten(1).mean(1).clamp_min(1 / 255**2)  # a blank image: one level
        return {"mse": mse, "nmse": mse / energy}

    def _decode(self, z: Tensor) -> Tensor:
        out = [self.net.decode(z[i : i + self.chunk]) for i in range(0, len(z), self.chunk)]
        return ((torch.cat(out).float() + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def preview(self, batch: dict[str, Tensor], generator: torch.Generator) -> tuple[Tensor, int]:
        """The training grid: rows of inputs, each followed by its reconstructions, then as
        many rows of samples."""
        x = batch["image"]
        nrow = min(8, len(x))
        x = x[: nrow * min(2, len(x) // nrow)]  # one or two full rows of inputs
        inputs, recons = (x.float() + 1) / 2, self.reconstruct(x)
        samples = self._decode(self.latents(len(x), generator))
        rows = []
        for i in range(0, len(x), nrow):
            rows += [inputs[i : i + nrow].to(recons.device), recons[i : i + nrow]]
        return torch.cat([*rows, samples]), nrow


class VAESampler(AutoencoderSampler):
    """The VAE's sampler, which also reports the model's likelihood of images to genctl's
    evaluation (``eval/nll``, ``eval/bpd``): the negative ELBO, an upper bound on the NLL. The
    deterministic autoencoder has no likelihood, so its sampler has none."""

    def __init__(self, config, nets: dict[str, nn.Module], data: DataInfo):
        super().__init__(config, nets, data)
        self.recon, self.decoder_std = config.recon, config.decoder_std

    @torch.no_grad()
    def nll(self, images: Tensor, labels: Tensor | None, generator: torch.Generator) -> Tensor:
        """-ELBO in nats of each uint8 image (``labels`` unused: the VAE is unconditional)."""
        return negative_elbo(self.net, images, self.recon, self.decoder_std, generator)

    @torch.no_grad()
    def anomaly_scores(self, images: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """The autoencoder's ``mse``, and ``kl`` (the posterior's KL from the prior, nats: how
        far from typical codes the image lands) and ``nelbo`` (the negative ELBO of ``nll``,
        nats, one posterior sample drawn from ``generator``)."""
        scores = super().anomaly_scores(images, generator)
        mu, logvar = self.net.posterior(images.float() / 255 * 2 - 1)
        scores["kl"] = gaussian_kl(mu.float(), logvar.float())
        scores["nelbo"] = self.nll(images, None, generator)
        return scores

    def nll_protocol(self) -> dict[str, str]:
        return likelihood_protocol(self.recon, self.decoder_std)

    # The latent interface (genctl.steering): z is the decoder's input, of the prior's shape.
    # Only the VAE has it: the deterministic autoencoder has no prior to draw a start from.

    def latent(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` latents from the prior, drawn on the CPU ``generator``."""
        return self.latents(n, generator).cpu()

    def generate(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """The decoder's images in [0, 1] of latents ``z``, differentiable in ``z``."""
        return ((self.net.decode(z.to(self.net.latent_mean.device)).float() + 1) / 2).clamp(0, 1)
