"""Checks of generation arguments that need no model and no torch: each returns the value it accepts
or raises GenerationError (FormatError for image sizes a layout cannot draw) in one line that says
what is accepted. The Pipeline and the CLIs share them, so both refuse the same things in the same
words, and the CLIs run them before the slow imports and the model load."""

from __future__ import annotations

import math
import numbers
from typing import Callable, Sequence

from lumina_mgpt.errors import GenerationError
from lumina_mgpt.formats import VocabLayout, check_image_size

# Seeds are int64 on the device, as in torch.Generator.manual_seed's non-negative range.
MAX_SEED = 2**63 - 1
# How the guidance scale moves along an image; see generation.engine.guidance_scales.
CFG_SCHEDULES = ("constant", "decay-to-4")


def is_integer(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _shown(value: object) -> str:
    return repr(value) if is_integer(value) else f"{value!r} ({type(value).__name__})"


def check_integer(name: str, value: object, minimum: int, meaning: str, maximum: int | None = None) -> int:
    """`value` as an int, or GenerationError naming `name`, the value and the accepted range."""
    if not is_integer(value) or value < minimum or (maximum is not None and value > maximum):
        accepted = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
        raise GenerationError(f"{name} must be an integer {accepted} ({meaning}), got {_shown(value)}")
    return int(value)


def _check_real(name: str, value: object, accepted: str, valid: Callable[[float], bool]) -> float:
    if not is_number(value) or not math.isfinite(value) or not valid(value):
        raise GenerationError(f"{name} must be {accepted}, got {_shown(value)}")
    return float(value)


def check_cfg(name: str, value: object) -> float:
    return _check_real(name, value, "a finite number >= 0 (classifier-free guidance; 1 disables it)", lambda v: v >= 0)


def check_temperature(name: str, value: object) -> float:
    return _check_real(name, value, "a finite number >= 0 (0 is greedy)", lambda v: v >= 0)


def check_top_p(name: str, value: object) -> float:
    return _check_real(name, value, "a number in (0, 1] (1 keeps every token)", lambda v: 0 < v <= 1)


def check_top_k(name: str, value: object) -> int:
    return check_integer(name, value, 1, "the k likeliest tokens are kept; the vocabulary or codebook size keeps all")


def check_prompts(prompts: object, what: str = "prompt") -> list[str]:
    """A str or a sequence of str, as a non-empty list of valid UTF-8 text; GenerationError otherwise."""
    if isinstance(prompts, str):
        prompts = [prompts]
    elif prompts is None or isinstance(prompts, (bytes, bytearray, memoryview)) or not isinstance(prompts, Sequence):
        raise GenerationError(
            f"{what}s must be a str or a list of str, got {type(prompts).__name__}"
            + ("; decode bytes first, e.g. data.decode('utf-8')" if isinstance(prompts, (bytes, bytearray)) else "")
        )
    prompts = list(prompts)
    if not prompts:
        raise GenerationError(f"no {what}s given; pass at least one {what} (a str)")
    for number, prompt in enumerate(prompts, 1):
        if not isinstance(prompt, str):
            raise GenerationError(f"{what} {number} is {type(prompt).__name__}, not str; every {what} must be text")
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError as error:
            # Undecodable bytes in argv arrive as lone surrogates (U+DC80..U+DCFF hold the byte).
            bad = prompt[error.start]
            byte = f" (byte 0x{ord(bad) - 0xDC00:02x})" if 0xDC80 <= ord(bad) <= 0xDCFF else ""
            raise GenerationError(
                f"{what} {number} is not valid UTF-8 text: {ascii(bad)}{byte} at character {error.start}; "
                f"give {what}s as UTF-8 text"
            ) from None
    return prompts


def check_seeds(seed: object, count: int) -> list[int]:
    """One seed per image: `seed + i` for an int seed, or a sequence of `count` seeds; each in 0..2**63-1."""
    if is_integer(seed):
        first = check_integer("seed", seed, 0, "image i uses seed + i", MAX_SEED)
        if first + count - 1 > MAX_SEED:
            raise GenerationError(
                f"seed {first} with {count} images needs seeds up to {first + count - 1}, beyond {MAX_SEED} (2**63-1); "
                f"accepted: a first seed from 0 to {MAX_SEED - count + 1}"
            )
        return list(range(first, first + count))
    if isinstance(seed, (str, bytes)) or not isinstance(seed, Sequence):
        raise GenerationError(f"seed must be an integer or a list of one integer per image, got {_shown(seed)}")
    if len(seed) != count:
        raise GenerationError(f"got {len(seed)} seeds for {count} images; give one seed per image")
    return [check_integer(f"seed of image {i}", s, 0, "seeds are int64", MAX_SEED) for i, s in enumerate(seed)]


def check_sjd_window(value: object) -> int | None:
    if value is None:
        return None
    return check_integer("sjd_window", value, 1, "draft tokens verified per forward; 16 is usual; None: plain decoding")


def check_image_dimensions(width: object, height: object, layout: VocabLayout) -> tuple[int, int]:
    """(width, height) as ints accepted by `layout`; GenerationError for non-integers, FormatError for sizes
    the layout cannot represent."""
    for name, value in (("width", width), ("height", height)):
        if not is_integer(value):
            step = layout.pixels_per_indicator
            raise GenerationError(
                f"{name} must be an integer number of pixels, got {_shown(value)}; accepted: multiples of {step} "
                f"from {step} to {layout.max_indicator * step}"
            )
    check_image_size(int(width), int(height), layout)
    return int(width), int(height)


def check_cfg_schedule(value: object) -> str:
    if value not in CFG_SCHEDULES:
        raise GenerationError(f"unknown cfg_schedule {value!r}; accepted: {', '.join(CFG_SCHEDULES)}")
    return value
