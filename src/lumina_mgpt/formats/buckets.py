"""Resolution buckets: the candidate (width, height) sizes for a target side, aspect-ratio
matching and the resize-and-crop that brings an image to its bucket (docs/FORMATS.md)."""

from __future__ import annotations

import random

from PIL import Image

from lumina_mgpt.errors import FormatError


def bucket_sizes(target_side: int, step: int = 32, max_ratio: float = 4.0) -> list[tuple[int, int]]:
    """Candidate (width, height) sizes, multiples of `step`, with w*h <= target_side**2.

    Like the official code, only sizes on the edge of the area budget are kept: in units of
    `step`, the heights of width w run from the largest height allowed at width w + 1 up to the
    largest allowed at width w. Widest first: 49 sizes at 512, 73 at 768, 97 at 1024."""
    if target_side <= 0 or target_side % step:
        raise FormatError(f"target side must be a positive multiple of {step}, got {target_side}")
    budget = (target_side // step) ** 2
    sizes = []
    for w in range(budget, 0, -1):
        for h in range(max(budget // (w + 1), 1), budget // w + 1):
            if max(w / h, h / w) <= max_ratio:
                sizes.append((w * step, h * step))
    return sizes


def _ratio_match(width: int, height: int, size: tuple[int, int]) -> float:
    scale_w, scale_h = size[0] / width, size[1] / height
    return min(scale_w, scale_h) / max(scale_w, scale_h)


def closest_bucket(width: int, height: int, sizes: list[tuple[int, int]]) -> tuple[int, int]:
    """The size whose aspect ratio is closest to width:height (the first one on ties)."""
    if width <= 0 or height <= 0 or not sizes:
        raise FormatError(
            f"need a positive image size and at least one bucket, got {width}x{height} and {len(sizes)} sizes"
        )
    return max(sizes, key=lambda size: _ratio_match(width, height, size))


def resize_to_bucket(image: Image.Image, size: tuple[int, int], rng: random.Random | None = None) -> Image.Image:
    """Resize `image` to exactly `size` = (width, height): halve with BOX filtering while it is
    at least twice the target, BICUBIC-resize to cover it, then crop (centered when `rng` is
    None, at an offset drawn from `rng` otherwise)."""
    target_w, target_h = size
    if target_w <= 0 or target_h <= 0:
        raise FormatError(f"bucket size must be positive, got {target_w}x{target_h}")
    while image.width >= 2 * target_w and image.height >= 2 * target_h:
        image = image.resize((image.width // 2, image.height // 2), resample=Image.BOX)
    scale = max(target_w / image.width, target_h / image.height)
    cover = (max(target_w, round(image.width * scale)), max(target_h, round(image.height * scale)))
    if cover != image.size:
        image = image.resize(cover, resample=Image.BICUBIC)
    spare_w, spare_h = image.width - target_w, image.height - target_h
    if rng is None:
        left, top = spare_w // 2, spare_h // 2
    else:
        left, top = rng.randint(0, spare_w), rng.randint(0, spare_h)
    return image.crop((left, top, left + target_w, top + target_h))
