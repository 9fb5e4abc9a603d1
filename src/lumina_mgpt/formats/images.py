"""Opening user images: any common file, bytes or PIL image -> an 8-bit RGB PIL image."""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image, ImageOps

from lumina_mgpt.errors import FormatError

DEFAULT_MAX_PIXELS = 16_384 * 16_384
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def open_image(source: str | os.PathLike | bytes | Image.Image, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode `source` into an RGB image (EXIF orientation applied).

    Transparency is blended onto white; 16-bit grayscale ('I;16*', and 'I' as PNG stores it) is
    scaled to 8 bits; 'F' is read as [0, 1]. Raises FormatError for unreadable, truncated or
    undecodable data and for images with more than `max_pixels` pixels."""
    label = "the image" if isinstance(source, (bytes, Image.Image)) else f"image {os.fspath(source)!r}"
    if isinstance(source, Image.Image):
        image = source
    else:
        image = _decode(source, max_pixels, label)
    if image.width * image.height > max_pixels:
        raise FormatError(
            f"{label} has {image.width}x{image.height} pixels; at most {max_pixels} pixels are accepted"
        )
    image = ImageOps.exif_transpose(image)
    return _to_rgb(image)


def _decode(source: str | os.PathLike | bytes, max_pixels: int, label: str) -> Image.Image:
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            # The size limit below is ours; PIL's global bomb check stays as a last resort.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(stream)
            if image.width * image.height > max_pixels:
                raise FormatError(
                    f"{label} has {image.width}x{image.height} pixels; at most {max_pixels} pixels are accepted"
                )
            image.load()
    except Image.DecompressionBombError as error:
        raise FormatError(
            f"{label} is too large to decode safely ({error}); at most {max_pixels} pixels are accepted"
        ) from error
    except FileNotFoundError as error:
        raise FormatError(f"{label} does not exist") from error
    except FormatError:
        raise
    except (OSError, SyntaxError, ValueError) as error:
        raise FormatError(
            f"cannot decode {label}: {error}; accepted: complete files in a format Pillow reads "
            "(PNG, JPEG, WebP, GIF, BMP, TIFF, ...)"
        ) from error
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in _SIXTEEN_BIT_MODES:
        scaled = np.asarray(image, dtype=np.float64) / 257.0
        image = Image.fromarray(np.rint(np.clip(scaled, 0, 255)).astype(np.uint8))
    elif image.mode == "F":
        scaled = np.asarray(image, dtype=np.float64) * 255.0
        image = Image.fromarray(np.rint(np.clip(scaled, 0, 255)).astype(np.uint8))
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image
