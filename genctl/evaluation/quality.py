"""PSNR and SSIM: how close each output is to its target, for paired tasks.

Both take float images in [0, 1], N x C x H x W, and return one value per image (the caller
averages). They are computed on all channels as given (RGB, not the Y channel) with no border
crop, on the 8-bit images a user would save: the evaluation quantises to uint8 first.

* PSNR = 10 log10(L^2 / MSE), L the data range; ``inf`` for identical images.
* SSIM follows Wang, Bovik, Sheikh and Simoncelli, "Image Quality Assessment: From Error
  Visibility to Structural Similarity" (IEEE TIP 2004): an 11 x 11 Gaussian window of sigma 1.5,
  K1 = 0.01, K2 = 0.03, local statistics over valid windows only, the SSIM map averaged over
  positions and channels. Images smaller than 11 px use the largest odd window that fits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def psnr(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio in dB of each image of ``x`` against ``y`` (shape N)."""
    _check_pair(x, y)
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(data_range**2 / mse)  # mse == 0 gives inf, as it should


def ssim(
    x: Tensor,
    y: Tensor,
    data_range: float = 1.0,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> Tensor:
    """Structural similarity of each image of ``x`` against ``y`` (shape N), 1.0 when identical."""
    _check_pair(x, y)
    x, y = x.double(), y.double()
    channels, height, width = x.shape[1:]
    size = min(window_size, height, width)
    size -= 1 - size % 2  # odd, so the window has a centre
    kernel = _gaussian_window(size, sigma, x.device).expand(channels, 1, size, size)

    def local_mean(t: Tensor) -> Tensor:
        return F.conv2d(t, kernel, groups=channels)

    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x = local_mean(x * x) - mu_x**2
    var_y = local_mean(y * y) - mu_y**2
    cov_xy = local_mean(x * y) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return ssim_map.flatten(1).mean(dim=1)


def _gaussian_window(size: int, sigma: float, device: torch.device) -> Tensor:
    coords = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)[None, None]


def _check_pair(x: Tensor, y: Tensor) -> None:
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(
            f"PSNR/SSIM need two N x C x H x W batches of one shape, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
