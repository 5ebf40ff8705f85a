"""The convolutional autoencoder, deterministic or variational, with a spatial latent.

The encoder halves the image once per entry of ``channel_mults`` (strided 4x4 convolutions), so
the latent ``z`` is ``latent_channels x H/2^L x W/2^L``: a small image, which a latent diffusion
model can be trained on. With ``latent: vector`` a linear layer maps the last feature map to a
``latent_channels x 1 x 1`` latent instead: one global code, the classic VAE. The decoder mirrors the encoder with transposed convolutions and ends
in logits: ``sigmoid(logits)`` is the decoder's mean image on the [0, 1] scale.

The network is the interface other families use (see the README): ``encode(x) -> z``,
``decode(z) -> x`` (both on the [-1, 1] image scale of genctl batches), ``latent_shape``, and the
running moments of the training latents, ``latent_mean`` / ``latent_var`` (buffers, saved with
the weights), which the deterministic autoencoder samples from and a latent model can
normalise with.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from genctl.errors import BadInput
from genctl.spec import DataInfo

LATENT_MOMENTUM = 0.01  # running latent moments: a moving average over about 100 steps


def _norm(channels: int) -> nn.Module:
    return nn.GroupNorm(math.gcd(channels, 8), channels)  # up to 8 groups that divide channels


def _block(conv: nn.Conv2d | nn.ConvTranspose2d) -> list[nn.Module]:
    return [conv, _norm(conv.out_channels), nn.SiLU()]


def reparameterise(mu: Tensor, logvar: Tensor, eps: Tensor) -> Tensor:
    """z = mu + sigma * eps with sigma = exp(logvar / 2): a sample of N(mu, sigma^2) through
    which gradients reach mu and logvar (Kingma and Welling 2014, sec. 2.4)."""
    return mu + torch.exp(0.5 * logvar) * eps


class Encoder(nn.Module):
    """Image -> one strided 4x4 conv (halving) and one 3x3 conv per level -> z: a 1x1 conv
    (spatial latent), or a linear layer on the flattened last map (vector latent)."""

    def __init__(self, channels: int, widths: list[int], out_channels: int, vector_side: int = 0):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, widths[0], 3, 1, 1), nn.SiLU()]
        c_in = widths[0]
        for w in widths:
            layers += _block(nn.Conv2d(c_in, w, 4, 2, 1))
            layers += _block(nn.Conv2d(w, w, 3, 1, 1))
            c_in = w
        if vector_side:
            linear = nn.Linear(c_in * vector_side**2, out_channels)
            layers += [nn.Flatten(), linear, nn.Unflatten(1, (out_channels, 1, 1))]
        else:
            layers.append(nn.Conv2d(c_in, out_channels, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """z -> a 3x3 conv (or, for a vector z, a linear layer to the smallest map), then per level
    a transposed 4x4 conv (doubling) and a 3x3 conv -> logits."""

    def __init__(
        self, latent_channels: int, widths: list[int], channels: int, vector_side: int = 0
    ):
        super().__init__()
        rev = widths[::-1]
        if vector_side:
            shape = (rev[0], vector_side, vector_side)
            linear = nn.Linear(latent_channels, rev[0] * vector_side**2)
            layers = [nn.Flatten(), linear, nn.Unflatten(1, shape), _norm(rev[0]), nn.SiLU()]
        else:
            layers = _block(nn.Conv2d(latent_channels, rev[0], 3, 1, 1))
        for w, w_next in zip(rev, [*rev[1:], rev[-1]], strict=True):
            layers += _block(nn.ConvTranspose2d(w, w_next, 4, 2, 1))
            layers += _block(nn.Conv2d(w_next, w_next, 3, 1, 1))
        layers.append(nn.Conv2d(rev[-1], channels, 3, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


class Autoencoder(nn.Module):
    """Encoder and decoder; ``variational`` makes the encoder output (mu, logvar) of q(z|x)."""

    def __init__(
        self,
        channels: int,
        image_size: int,
        width: int = 32,
        channel_mults: list[int] | tuple[int, ...] = (1, 2),
        latent_channels: int = 4,
        variational: bool = False,
        latent: str = "spatial",
    ):
        super().__init__()
        levels = len(channel_mults)
        if image_size % 2**levels:
            raise BadInput(
                f"autoencoder: data.image_size {image_size} cannot be halved {levels} times "
                f"(model.channel_mults has {levels} levels)",
                f"Use an image size divisible by {2**levels}, or fewer channel_mults.",
            )
        self.variational = variational
        side = image_size // 2**levels
        vector_side = side if latent == "vector" else 0
        self.latent_shape = (
            (latent_channels, 1, 1) if vector_side else (latent_channels, side, side)
        )
        widths = [width * m for m in channel_mults]
        out = latent_channels * (2 if variational else 1)
        self.encoder = Encoder(channels, widths, out, vector_side)
        self.decoder = Decoder(latent_channels, widths, channels, vector_side)
        self.register_buffer("latent_mean", torch.zeros(self.latent_shape))
        self.register_buffer("latent_var", torch.ones(self.latent_shape))

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """(mu, logvar) of q(z|x) for the VAE; (z, None) for the deterministic autoencoder."""
        h = self.encoder(x)
        if not self.variational:
            return h, None
        mu, logvar = h.chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)  # exp() stays finite whatever the encoder says

    def encode(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Images in [-1, 1] -> latents. The VAE gives the posterior mean, or a posterior
        sample drawn from ``generator`` (a CPU generator) when one is given."""
        mu, logvar = self.posterior(x)
        if logvar is None or generator is None:
            return mu
        eps = torch.randn(mu.shape, generator=generator).to(mu.device, mu.dtype)
        return reparameterise(mu, logvar, eps)

    def decode_logits(self, z: Tensor) -> Tensor:
        return self.decoder(z)

    def decode(self, z: Tensor) -> Tensor:
        """Latents -> the decoder's mean image, in [-1, 1]."""
        return torch.sigmoid(self.decoder(z)) * 2 - 1

    def prior(self) -> tuple[Tensor, Tensor]:
        """Mean and std of the distribution ``sample`` mode draws latents from: N(0, I) for the
        VAE; for the autoencoder, which has no prior, a diagonal Gaussian fitted to the
        training latents (their running moments)."""
        if self.variational:
            return torch.zeros_like(self.latent_mean), torch.ones_like(self.latent_var)
        return self.latent_mean, self.latent_var.sqrt()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """The training pass: (decoder logits, mu, logvar); z is reparameterised for the VAE.
        In training mode the running moments of z are updated, as batch norm's are."""
        mu, logvar = self.posterior(x)
        z = mu if logvar is None else reparameterise(mu, logvar, torch.randn_like(mu))
        if self.training:
            self._track(z.detach().float())
        return self.decoder(z), mu, logvar

    @torch.no_grad()
    def _track(self, z: Tensor) -> None:
        self.latent_mean.lerp_(z.mean(0), LATENT_MOMENTUM)
        self.latent_var.lerp_(z.var(0, unbiased=False), LATENT_MOMENTUM)


def build(config, data: DataInfo) -> dict[str, nn.Module]:
    """``{"autoencoder": net}``, variational when ``config`` is a VAE config."""
    from .config import VAEConfig

    net = Autoencoder(
        data.channels,
        data.image_size,
        config.width,
        list(config.channel_mults),
        config.latent_channels,
        variational=isinstance(config, VAEConfig),
        latent=config.latent,
    )
    return {"autoencoder": net}
