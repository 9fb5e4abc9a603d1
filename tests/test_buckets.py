"""Resolution buckets, resize-and-crop, and opening images of every common kind."""

import io
import random

import numpy as np
import pytest
from PIL import Image
from skimage import data as sample_images

from lumina_mgpt.errors import FormatError
from lumina_mgpt.formats import bucket_sizes, closest_bucket, open_image, resize_to_bucket


@pytest.mark.parametrize(
    "side, count, first, last",
    [(512, 49, (1024, 256), (256, 1024)), (768, 73, (1536, 384), (384, 1536)), (1024, 97, (2048, 512), (512, 2048))],
)
def test_bucket_counts_match_the_official_lists(side, count, first, last):
    sizes = bucket_sizes(side)
    assert len(sizes) == count == len(set(sizes))
    assert (sizes[0], sizes[-1]) == (first, last)
    assert (side, side) in sizes
    for w, h in sizes:
        assert w % 32 == 0 and h % 32 == 0 and w * h <= side * side and max(w / h, h / w) <= 4


def test_bucket_sizes_refuse_a_side_off_the_grid():
    with pytest.raises(FormatError, match="multiple of 32, got 500"):
        bucket_sizes(500)


def test_closest_bucket_matches_aspect_ratio():
    sizes = bucket_sizes(512)
    assert closest_bucket(1000, 1000, sizes) == (512, 512)
    assert closest_bucket(1000, 500, sizes) == (704, 352)  # exactly 2:1
    assert closest_bucket(300, 1200, sizes) == (256, 1024)  # 1:4
    assert closest_bucket(5000, 100, sizes) == (1024, 256)  # beyond 4:1: the widest
    # 3:2 exactly (576x384) is not on the area edge at 512; 608x416 (1.46) is the closest.
    assert (576, 384) not in sizes
    assert closest_bucket(600, 400, sizes) == (608, 416)


def _photo(width, height):
    return Image.fromarray(sample_images.coffee()).resize((width, height), Image.BICUBIC)


@pytest.mark.parametrize(
    "source, target", [((600, 400), (608, 416)), ((4000, 1900), (704, 352)), ((300, 451), (448, 640))]
)
def test_resize_to_bucket_gives_the_exact_size(source, target):
    image = _photo(*source)
    assert resize_to_bucket(image, target).size == target
    assert resize_to_bucket(image, target, random.Random(3)).size == target


def test_center_and_seeded_random_crops_are_deterministic():
    image = _photo(900, 400)  # 2.25:1 into a square: a lot to crop horizontally
    center = np.asarray(resize_to_bucket(image, (512, 512)))
    assert np.array_equal(center, np.asarray(resize_to_bucket(image, (512, 512))))
    # The centered crop is the middle of the cover-resized image.
    cover = np.asarray(image.resize((1152, 512), Image.BICUBIC))
    assert np.array_equal(center, cover[:, 320:832])
    first = np.asarray(resize_to_bucket(image, (512, 512), random.Random(7)))
    again = np.asarray(resize_to_bucket(image, (512, 512), random.Random(7)))
    assert np.array_equal(first, again)
    offset = random.Random(7).randint(0, 640)
    assert np.array_equal(first, cover[:, offset : offset + 512])
    other = np.asarray(resize_to_bucket(image, (512, 512), random.Random(8)))
    assert not np.array_equal(first, other)


def test_large_images_are_halved_with_box_filter_first():
    image = _photo(2500, 1700)
    # Halved twice (625x425 is under 2 x 608x416), then cover-resized to 612x416 and centre-cropped.
    halved = image.resize((1250, 850), Image.BOX).resize((625, 425), Image.BOX)
    expected = np.asarray(halved.resize((612, 416), Image.BICUBIC))[:, 2:610]
    assert np.array_equal(np.asarray(resize_to_bucket(image, (608, 416))), expected)


def _png_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_transparency_is_blended_onto_white():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[0, :, 3] = 255  # top row opaque red, the rest fully transparent
    rgba[1, :, 3] = 128
    image = open_image(_png_bytes(Image.fromarray(rgba, "RGBA")))
    pixels = np.asarray(image)
    assert image.mode == "RGB"
    assert pixels[0, 0].tolist() == [200, 0, 0] and pixels[3, 3].tolist() == [255, 255, 255]
    assert pixels[1, 0].tolist() == [227, 127, 127]
    palette = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
    palette.putpalette([10, 20, 30, 40, 50, 60])
    palette.info["transparency"] = 1
    assert np.asarray(open_image(_png_bytes(palette))).tolist() == [[[10, 20, 30], [255, 255, 255]]]
    gray_alpha = Image.fromarray(np.stack([np.full((1, 2), 50, np.uint8), np.array([[255, 0]], np.uint8)], -1), "LA")
    assert np.asarray(open_image(gray_alpha)).tolist() == [[[50, 50, 50], [255, 255, 255]]]


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32_896, 65_535]], np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    image = open_image(path)
    assert np.asarray(image)[0, :, 0].tolist() == [0, 1, 128, 255]
    assert np.asarray(image)[0, 2].tolist() == [128, 128, 128]


def test_cmyk_and_grayscale_become_rgb():
    cmyk = Image.new("CMYK", (2, 2), (0, 255, 255, 0))  # pure red in CMYK
    assert np.asarray(open_image(cmyk))[0, 0].tolist() == [255, 0, 0]
    gray = Image.new("L", (2, 2), 77)
    assert np.asarray(open_image(gray))[1, 1].tolist() == [77, 77, 77]


def test_bad_files_raise_format_error(tmp_path):
    jpeg = io.BytesIO()
    Image.fromarray(sample_images.astronaut()).save(jpeg, format="JPEG")
    with pytest.raises(FormatError, match="cannot decode the image: .*accepted: complete files"):
        open_image(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    broken = tmp_path / "noise.png"
    broken.write_bytes(b"\x89PNG not really an image")
    with pytest.raises(FormatError, match="cannot decode image '.*noise.png'"):
        open_image(broken)
    with pytest.raises(FormatError, match="does not exist"):
        open_image(tmp_path / "missing.png")
    with pytest.raises(FormatError, match="has 64x32 pixels; at most 1000 pixels are accepted"):
        open_image(_png_bytes(Image.new("RGB", (64, 32))), max_pixels=1000)
