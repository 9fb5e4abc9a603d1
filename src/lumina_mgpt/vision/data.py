"""Training images for the small VQ: a folder of image files, scikit-image's bundled photos, or the
distinct patches of a synthetic world."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lumina_mgpt.errors import ImageTokenizerError
from lumina_mgpt.formats.images import open_image

# Photos bundled with scikit-image (no download). Chelsea and coffee are held out for evaluation.
SKIMAGE_TRAIN_PHOTOS = ("astronaut", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "camera", "coins")
SKIMAGE_HELDOUT_PHOTOS = ("chelsea", "coffee")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def skimage_photos(names: tuple[str, ...]) -> list[Image.Image]:
    """RGB PIL images of scikit-image's bundled photos `names`."""
    import skimage.data

    photos = []
    for name in names:
        loader = getattr(skimage.data, name, None)
        if loader is None:
            raise ImageTokenizerError(f"scikit-image has no bundled photo {name!r}")
        photos.append(open_image(Image.fromarray(np.asarray(loader()))))
    return photos


def folder_images(folder: str | os.PathLike) -> list[Image.Image]:
    """Every image file under `folder` (sorted, recursive) as RGB PIL images."""
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ImageTokenizerError(f"no image files under {folder}; accepted suffixes: {', '.join(IMAGE_SUFFIXES)}")
    return [open_image(path) for path in files]


def random_crops(images: list[Image.Image], count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """`count` square crops (N, 3, size, size) in [-1, 1], at random scales from `size` px up to the
    whole short side, resized to `size` px: small crops keep texture, large ones whole scenes."""
    too_small = [image.size for image in images if min(image.size) < size]
    if too_small:
        raise ImageTokenizerError(f"images {too_small} are smaller than the {size}px crop size")
    crops = np.empty((count, size, size, 3), dtype=np.uint8)
    for index in range(count):
        image = images[int(torch.randint(len(images), (1,), generator=generator))]
        short = min(image.size)
        # log-uniform side length, so every scale octave gets the same share of crops
        side = int(round(size * (short / size) ** torch.rand(1, generator=generator).item()))
        left = int(torch.randint(image.width - side + 1, (1,), generator=generator))
        top = int(torch.randint(image.height - side + 1, (1,), generator=generator))
        crop = image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
        crops[index] = np.asarray(crop)
    return torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def distinct_patches(images: list[Image.Image], size: int) -> torch.Tensor:
    """Every distinct `size` x `size` patch on the patch grid of `images`, as (N, 3, size, size) in [-1, 1],
    in a fixed (sorted) order.

    A tokenizer that encodes and decodes each patch alone (`VQConfig.patch_local` and
    `patch_local_decoder`) sees nothing but these patches, so it can train on them directly: each
    distinct patch then weighs the same, however much of the images it covers (a flat background
    would otherwise fill most of every batch), and no step is spent on repeats."""
    misfits = sorted({image.size for image in images if image.width % size or image.height % size})
    if not images or misfits:
        raise ImageTokenizerError(f"need images whose sides are multiples of {size} px, got sizes {misfits or 'none'}")
    found = set()
    for image in images:
        pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
        rows, cols = pixels.shape[0] // size, pixels.shape[1] // size
        grid = pixels.reshape(rows, size, cols, size, 3).transpose(0, 2, 1, 3, 4).reshape(rows * cols, -1)
        found.update(patch.tobytes() for patch in grid)
    patches = np.frombuffer(b"".join(sorted(found)), dtype=np.uint8).reshape(-1, size, size, 3)
    return torch.from_numpy(patches.copy()).permute(0, 3, 1, 2).float() / 127.5 - 1.0
