"""Image degradations that imitate what a VQ tokenizer round trip does to a render: loss of
resolution, blocky compression, noise and color drift. The analyzer must survive them (its
robustness figures come from these), and training may use them as augmentation."""

from __future__ import annotations

from collections.abc import Callable
from io import BytesIO

import numpy as np
from PIL import Image, ImageEnhance

from lumina_mgpt.errors import DataError


def downscale(image: Image.Image, factor: int) -> Image.Image:
    """Average down by `factor`, then bicubic back up: the detail a coarse latent grid keeps."""
    small = image.resize(
        (image.width // factor, image.height // factor), Image.Resampling.BOX
    )
    return small.resize(image.size, Image.Resampling.BICUBIC)


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    """A JPEG round trip: 8x8 blocks and 2x2 chroma subsampling."""
    buffer = BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def gaussian_noise(image: Image.Image, std: float, rng: np.random.Generator) -> Image.Image:
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    noisy = pixels + rng.normal(0.0, std, size=pixels.shape)
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))


def color_jitter(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Brightness, contrast and saturation within +-15 %, hue within +-8 degrees."""
    image = image.convert("RGB")
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhancer(image).enhance(float(rng.uniform(0.85, 1.15)))
    hsv = np.asarray(image.convert("HSV")).copy()
    shift = int(round(rng.uniform(-8.0, 8.0) * 256 / 360))
    hsv[..., 0] = (hsv[..., 0].astype(np.int64) + shift) % 256
    return Image.fromarray(hsv, mode="HSV").convert("RGB")


def vq_like(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """All at once, milder: x2 resolution loss, color drift, JPEG 50, light noise."""
    image = color_jitter(downscale(image, 2), rng)
    return gaussian_noise(jpeg(image, 50), 6.0, rng)


DEGRADATIONS: dict[str, Callable[[Image.Image, np.random.Generator], Image.Image]] = {
    "downscale2": lambda image, rng: downscale(image, 2),
    "downscale4": lambda image, rng: downscale(image, 4),
    "jpeg30": lambda image, rng: jpeg(image, 30),
    "noise12": lambda image, rng: gaussian_noise(image, 12.0, rng),
    "color_jitter": color_jitter,
    "vq_like": vq_like,
}


def degrade(image: Image.Image, kind: str, rng: np.random.Generator) -> Image.Image:
    """Apply the degradation named `kind` (one of DEGRADATIONS)."""
    if kind not in DEGRADATIONS:
        raise DataError(f"unknown degradation {kind!r}; accepted: {', '.join(DEGRADATIONS)}")
    return DEGRADATIONS[kind](image, rng)
