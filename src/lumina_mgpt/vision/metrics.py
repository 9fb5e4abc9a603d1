"""Reconstruction quality: PSNR, SSIM (Wang et al. 2004, Gaussian window) and round-trip stability."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lumina_mgpt.errors import ImageTokenizerError

_SSIM_SIGMA = 1.5
_SSIM_RADIUS = 5  # an 11-tap window, as skimage's structural_similarity(gaussian_weights=True) uses
_SSIM_K1, _SSIM_K2 = 0.01, 0.03
SSIM_MIN_SIDE = 2 * _SSIM_RADIUS + 1


def squared_error(reference: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared error of (B, C, H, W) images in [-1, 1], measured on the [0, 1] scale."""
    return ((reference.float() - reconstruction.float()) / 2).pow(2).flatten(1).mean(dim=1)


def decibels(error: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of a mean squared error on the [0, 1] scale (an error of 0 reads as 120 dB)."""
    return -10.0 * torch.log10(error.clamp_min(1e-12))


def psnr(reference: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of (B, C, H, W) images in [-1, 1], measured on the [0, 1] scale."""
    return decibels(squared_error(reference, reconstruction))


def ssim(reference: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM of (B, C, H, W) images in [-1, 1] (data range 1 after mapping to [0, 1]),
    averaged over channels and over the window positions that lie fully inside the image."""
    if min(reference.shape[-2:]) < SSIM_MIN_SIDE:
        side = tuple(reference.shape[-2:])
        raise ImageTokenizerError(f"SSIM needs images of at least {SSIM_MIN_SIDE} px a side, got {side}")
    x = (reference.float() + 1) / 2
    y = (reconstruction.float() + 1) / 2
    channels = x.shape[1]
    offsets = torch.arange(-_SSIM_RADIUS, _SSIM_RADIUS + 1, dtype=torch.float32, device=x.device)
    taps = torch.exp(-(offsets**2) / (2 * _SSIM_SIGMA**2))
    taps = taps / taps.sum()
    window = (taps[:, None] * taps[None, :]).expand(channels, 1, -1, -1)

    def local_mean(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window, groups=channels)

    mean_x, mean_y = local_mean(x), local_mean(y)
    var_x = local_mean(x * x) - mean_x**2
    var_y = local_mean(y * y) - mean_y**2
    covariance = local_mean(x * y) - mean_x * mean_y
    c1, c2 = _SSIM_K1**2, _SSIM_K2**2
    score = ((2 * mean_x * mean_y + c1) * (2 * covariance + c2)) / (
        (mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2)
    )
    return score.flatten(1).mean(dim=1)


@torch.inference_mode()
def evaluate_reconstruction(tokenizer, pixels: torch.Tensor, batch_size: int = 32) -> dict[str, float]:
    """Over (N, 3, H, W) pixels in [-1, 1]: mean PSNR and SSIM of encode -> decode; the share of codes
    that survive decode -> encode unchanged; and the PSNR between the decoded images and their own
    re-encoded decodes (how much a second round trip changes a picture, whatever the code ids), from
    the squared error pooled over all images: a per-image mean would be dominated by the images that
    come back identical (infinite PSNR)."""
    psnrs, ssims, round_trip_errors, stable = [], [], [], []
    for start in range(0, pixels.shape[0], batch_size):
        batch = pixels[start : start + batch_size]
        codes = tokenizer.encode(batch)
        decoded = tokenizer.decode(codes)
        again = tokenizer.encode(decoded)
        psnrs.append(psnr(batch, decoded.cpu()))
        ssims.append(ssim(batch, decoded.cpu()))
        round_trip_errors.append(squared_error(decoded.cpu(), tokenizer.decode(again).cpu()))
        stable.append((again == codes).float().mean().item() * batch.shape[0])
    return {
        "psnr": torch.cat(psnrs).mean().item(),
        "ssim": torch.cat(ssims).mean().item(),
        "code_stability": sum(stable) / pixels.shape[0],
        "round_trip_psnr": decibels(torch.cat(round_trip_errors).mean()).item(),
        "images": pixels.shape[0],
    }
