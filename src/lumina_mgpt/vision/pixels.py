"""PIL images <-> (B, 3, H, W) tensors in [-1, 1], with the official pre/post-processing."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from lumina_mgpt.errors import ImageTokenizerError
from lumina_mgpt.formats.images import open_image

# How decoded floats become 8-bit values (see tensor_to_images).
PIXEL_ROUNDINGS = ("nearest", "truncate")


def images_to_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    """Stack same-size PIL images into float32 (B, 3, H, W) in [-1, 1].

    Any mode is accepted (transparency blended onto white, 16-bit scaled to 8 bits, via
    `lumina_mgpt.formats.images.open_image`); sizes must all be equal."""
    if isinstance(images, Image.Image) or not isinstance(images, Sequence) or len(images) == 0:
        raise ImageTokenizerError("expected a non-empty list of PIL images")
    if not all(isinstance(image, Image.Image) for image in images):
        kinds = sorted({type(image).__name__ for image in images})
        raise ImageTokenizerError(f"expected a list of PIL images, got items of type {kinds}")
    sizes = sorted({image.size for image in images})
    if len(sizes) > 1:
        raise ImageTokenizerError(f"images of one size are needed to make a batch; got sizes {sizes}")
    arrays = np.stack([np.asarray(open_image(image), dtype=np.uint8) for image in images])
    pixels = torch.from_numpy(arrays).permute(0, 3, 1, 2).float()
    return pixels / 127.5 - 1.0


def tensor_to_images(pixels: torch.Tensor, rounding: str = "nearest") -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> RGB PIL images: clamped to [-1, 1], scaled to [0, 255], made 8-bit.

    `rounding` "nearest" rounds half to even, as MoVQGAN's official `show_images` does
    (`((x + 1) * 127.5).round()`); "truncate" drops the fraction, as Chameleon's official
    `_pil_from_chw_tensor` does (`((x + 1) / 2 * 255).astype(uint8)`, in float32 the same value
    before the cast, halving being exact).
    """
    if rounding not in PIXEL_ROUNDINGS:
        raise ImageTokenizerError(f"unknown rounding {rounding!r}; accepted: {', '.join(PIXEL_ROUNDINGS)}")
    if pixels.dim() != 4 or pixels.shape[1] != 3:
        raise ImageTokenizerError(f"expected pixels of shape (B, 3, H, W), got {tuple(pixels.shape)}")
    scaled = (pixels.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5
    if rounding == "nearest":
        scaled = scaled.round()
    # In [0, 255], so the cast truncates and never wraps.
    arrays = scaled.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(array, "RGB") for array in arrays]
