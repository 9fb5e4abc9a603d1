"""Prompt strings the official checkpoints were trained with (docs/FORMATS.md, exact wording)."""

from __future__ import annotations

import re

from lumina_mgpt.errors import FormatError

SIZE_PROMPT_PREFIX = re.compile(r"Generate an image of \d+x\d+ according to the following prompt:\n")
NO_SIZE_PROMPT_PREFIX = "Generate an image according to the following prompt:\n"
DUAL_PANEL_MAPS = ("depth map", "canny edge map", "hed edge map", "pose estimation map")
IMAGE_TO_IMAGE_MAPS = ("depth map", "canny edge map")


def _check_size(width: int, height: int) -> None:
    if int(width) != width or int(height) != height or width <= 0 or height <= 0:
        raise FormatError(f"prompt sizes must be positive integers, got {width}x{height}")


def text_to_image_prompt(prompt: str, width: int, height: int, include_size: bool = True) -> str:
    """The text-to-image question (width first in the text); without the size phrase when
    `include_size` is False (the v2 variant)."""
    if include_size:
        _check_size(width, height)
        return f"Generate an image of {width}x{height} according to the following prompt:\n{prompt}"
    return NO_SIZE_PROMPT_PREFIX + prompt


def drop_size_phrase(text: str) -> str:
    """`text` with a leading size-bearing text-to-image phrase replaced by the no-size one."""
    return SIZE_PROMPT_PREFIX.sub(NO_SIZE_PROMPT_PREFIX, text, count=1) if SIZE_PROMPT_PREFIX.match(text) else text


def image_map_pair_prompt(prompt: str, width: int, height: int, map_name: str) -> str:
    """v2 dual panel: the image in the upper half and its `map_name` in the lower half.
    width x height is the whole panel."""
    _check_size(width, height)
    if map_name not in DUAL_PANEL_MAPS:
        raise FormatError(f"unknown map {map_name!r}; accepted: {', '.join(DUAL_PANEL_MAPS)}")
    return (
        f"Generate a dual-panel image of {width}x{height} where the <lower half> displays a "
        f"<{map_name}>, while the <upper half> retains the original image for direct visual "
        f"comparison:\n{prompt}"
    )


def image_to_image_prompt(prompt: str, width: int, height: int, condition: str) -> str:
    """v2 dual panel: the reference (upper half) is `condition` -- "depth map", "canny edge map"
    or a short subject description -- and the model writes the image in the lower half.
    width x height is the whole panel; the reference is width x height/2."""
    _check_size(width, height)
    if not condition.strip() or any(c in condition for c in "<>\n"):
        raise FormatError(
            f"bad condition {condition!r}; accepted: {', '.join(IMAGE_TO_IMAGE_MAPS)} or a one-line "
            "subject description without '<', '>'"
        )
    return (
        f"Generate a dual-panel image of {width}x{height} where the <upper half> displays a "
        f"<{condition}>, while the <lower half> retains the original image for direct visual "
        f"comparison:\n{prompt}"
    )
