"""PSNR and SSIM: how close each output is to its target, for paired tasks.

Both take float images in [0, 1], N x C x H x W, and return one value per image (the caller
averages), on all channels as given. The evaluation quantises to uint8 first (the 8-bit images
a user would save), then :func:`paired_scores` applies a task's protocol:

* translation (``paired``): PSNR and SSIM on RGB, the whole image;
* super-resolution: as SR papers compute them (the benchmark code of EDSR, RCAN, BasicSR): on
  the Y channel of ITU-R BT.601 (:func:`luma`), after cropping ``scale`` pixels from every
  border (upscaling is least defined there). ``psnr_rgb`` / ``ssim_rgb`` give the same
  comparison on RGB. Y is not rounded to 8 bits (BasicSR does the same; MATLAB's ``rgb2ycbcr``
  rounds, which moves PSNR by a few hundredths of a dB).

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


# ITU-R BT.601 luma for R, G, B in [0, 1]: Y = 16 + 65.481 R + 128.553 G + 24.966 B, in [16, 235]
# (MATLAB's rgb2ycbcr, which the SR benchmark code follows).
BT601_OFFSET = 16.0
BT601_WEIGHTS = (65.481, 128.553, 24.966)


def luma(x: Tensor) -> Tensor:
    """The Y channel (ITU-R BT.601) of RGB images in [0, 1], N x 1 x H x W, scaled by 1/255 so
    it lies in [16/255, 235/255] and PSNR/SSIM keep ``data_range`` 1. Grey images are their own
    Y channel (returned as they are, not squeezed into [16, 235])."""
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"luma needs N x 1 x H x W or N x 3 x H x W images, got {tuple(x.shape)}")
    if x.shape[1] == 1:
        return x
    w = torch.tensor(BT601_WEIGHTS, dtype=torch.float64, device=x.device).view(1, 3, 1, 1)
    return (BT601_OFFSET + (x.double() * w).sum(dim=1, keepdim=True)) / 255.0


def crop_border(x: Tensor, border: int) -> Tensor:
    """``x`` without ``border`` pixels on each side (SR papers crop ``scale`` pixels)."""
    if border == 0:
        return x
    height, width = x.shape[-2:]
    if 2 * border >= min(height, width):
        raise ValueError(
            f"cropping {border} px from each border of {height} x {width} images leaves nothing"
        )
    return x[..., border:-border, border:-border]


def paired_scores(
    x: Tensor, y: Tensor, *, y_channel: bool = False, border: int = 0
) -> dict[str, Tensor]:
    """PSNR and SSIM of each image of ``x`` against ``y`` (float, [0, 1]) after cropping
    ``border`` px: on the Y channel when ``y_channel`` (for RGB images also ``psnr_rgb`` and
    ``ssim_rgb``, the same crop on all channels), else on the channels as given."""
    _check_pair(x, y)
    x, y = crop_border(x, border), crop_border(y, border)
    if not y_channel or x.shape[1] == 1:  # a grey image is its own Y channel
        return {"psnr": psnr(x, y), "ssim": ssim(x, y)}
    x_y, y_y = luma(x), luma(y)
    return {
        "psnr": psnr(x_y, y_y),
        "ssim": ssim(x_y, y_y),
        "psnr_rgb": psnr(x, y),
        "ssim_rgb": ssim(x, y),
    }


def paired_protocol(*, y_channel: bool, border: int, channels: int) -> str:
    """The recorded text (``eval.paired_metrics``) of how :func:`paired_scores` compared."""
    if not y_channel and not border and channels == 3:  # the text protocol ids were made with
        return "PSNR and SSIM (Gaussian 11x11, sigma 1.5) on 8-bit RGB, no crop"
    crop = f"{border} px cropped from each border" if border else "no crop"
    if channels == 1:
        where = "the grey channel (its own Y)" if y_channel else "the grey channel"
    elif y_channel:
        where = (
            "the Y channel (ITU-R BT.601, Y = 16 + 65.481 R + 128.553 G + 24.966 B, not rounded)"
        )
        crop += "; psnr_rgb/ssim_rgb: RGB, same crop"
    else:
        where = "RGB"
    return f"PSNR and SSIM (Gaussian 11x11, sigma 1.5) of 8-bit images on {where}, {crop}"


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
