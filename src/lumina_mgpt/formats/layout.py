"""Vocabulary layouts: where the special tokens, size indicators and image codes live in the id space.

Three layouts exist: the official v1 ("lumina-mgpt", Chameleon vocabulary), the official v2
("lumina-mgpt-2", Qwen vocabulary + MoVQGAN codes) and "compact" (models trained by this
project: text ids, then image codes, then the special tokens). See docs/FORMATS.md for the ids.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from lumina_mgpt.errors import FormatError

LAYOUT_NAMES = ("lumina-mgpt", "lumina-mgpt-2", "compact")

START_IMAGE_TOKEN = "<racm3:break>"
END_IMAGE_TOKEN = "<eoss>"
END_LINE_TOKEN = "<reserved08799>"
SEPARATOR_TOKEN = "<reserved08706>"
# The largest size indicator resolved by default: n = 128 is 4,096 pixels, twice the longest side
# of the largest official bucket (2,048 = 4 x 512 at target 1,024).
DEFAULT_MAX_INDICATOR = 128

# v1 (Chameleon) ids from docs/FORMATS.md; the tokenizer, when given, must agree with them.
V1_VOCAB_SIZE = 65_536
V1_CODEBOOK_SIZE = 8_192
V1_START_IMAGE_ID = 8_197
V1_END_IMAGE_ID = 8_196
V1_END_LINE_ID = 8_803
V1_SEPARATOR_ID = 8_710
V1_FIRST_INDICATOR_ID = 8_804
V1_CODE_ID_RANGE = (4, 4 + V1_CODEBOOK_SIZE)

# v2 (Qwen + MoVQGAN) ids from docs/FORMATS.md.
V2_VOCAB_SIZE = 171_385
V2_CODEBOOK_SIZE = 16_384
V2_START_IMAGE_ID = 151_665
V2_END_IMAGE_ID = 151_666
V2_END_LINE_ID = 151_670
V2_FIRST_CODE_ID = 155_000
# Qwen's EOS: the official v2 code pads with it and, as Qwen has no BOS, starts every sequence with it.
V2_ENDOFTEXT_TOKEN = "<|endoftext|>"
V2_ENDOFTEXT_ID = 151_643

_DICT_KEYS = frozenset(
    ("name", "vocab_size", "bos_id", "start_image_id", "end_image_id", "end_line_id", "separator_id",
     "pad_id", "size_indicator_ids", "code_ids", "downsample", "pixels_per_indicator")
)


class TextTokenizerLike(Protocol):
    """What layouts need from a text tokenizer (lumina_mgpt.text.TextTokenizer satisfies it)."""

    vocab_size: int
    bos_id: int | None

    def token_to_id(self, token: str) -> int | None: ...


def size_indicator_token(n: int) -> str:
    """Name of the size-indicator token for n = pixels // 32 (`<reserved08800>` is n = 0)."""
    return f"<reserved{8800 + n:05d}>"


def chameleon_code_token(code: int) -> str:
    """Chameleon's name of image code c: IMGIMG + the decimal digits as letters A..J + Z."""
    return "IMGIMG" + "".join(chr(ord("A") + int(d)) for d in str(code)) + "Z"


@dataclass(frozen=True)
class VocabLayout:
    """Ids of every role in one vocabulary. Immutable; compare or fingerprint to check compatibility."""

    name: str
    vocab_size: int
    bos_id: int | None
    start_image_id: int
    end_image_id: int
    end_line_id: int
    separator_id: int
    pad_id: int
    size_indicator_ids: tuple[int, ...]  # index n -> id of <reserved{8800+n:05d}>
    code_ids: tuple[int, ...]  # image code c -> token id
    downsample: int  # pixels per latent cell
    pixels_per_indicator: int = 32
    _code_to_id: np.ndarray = field(init=False, repr=False, compare=False)
    _id_to_code: np.ndarray = field(init=False, repr=False, compare=False)
    _id_to_indicator: dict[int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.name not in LAYOUT_NAMES:
            raise FormatError(f"unknown layout {self.name!r}; accepted: {', '.join(LAYOUT_NAMES)}")
        if self.downsample <= 0 or self.pixels_per_indicator % self.downsample:
            raise FormatError(
                f"pixels_per_indicator ({self.pixels_per_indicator}) must be a positive multiple "
                f"of downsample ({self.downsample})"
            )
        code_to_id = np.asarray(self.code_ids, dtype=np.int64)
        specials = [self.start_image_id, self.end_image_id, self.end_line_id, self.separator_id]
        every_id = np.concatenate([code_to_id, np.asarray(specials + list(self.size_indicator_ids))])
        if every_id.size and (every_id.min() < 0 or every_id.max() >= self.vocab_size):
            raise FormatError(f"layout {self.name!r} has ids outside 0..{self.vocab_size - 1}")
        if len(np.unique(every_id)) != len(every_id):
            raise FormatError(f"layout {self.name!r} gives two roles the same id")
        id_to_code = np.full(self.vocab_size, -1, dtype=np.int64)
        id_to_code[code_to_id] = np.arange(len(code_to_id))
        code_to_id.setflags(write=False)
        id_to_code.setflags(write=False)
        object.__setattr__(self, "_code_to_id", code_to_id)
        object.__setattr__(self, "_id_to_code", id_to_code)
        object.__setattr__(
            self, "_id_to_indicator", {i: n for n, i in enumerate(self.size_indicator_ids)}
        )

    @property
    def codebook_size(self) -> int:
        return len(self.code_ids)

    @property
    def latent_cells_per_indicator(self) -> int:
        """Latent rows (or columns) per size-indicator step: 2 in v1, 4 in v2."""
        return self.pixels_per_indicator // self.downsample

    @property
    def max_indicator(self) -> int:
        """The largest n with a size-indicator token."""
        return len(self.size_indicator_ids) - 1

    def codes_to_ids(self, codes: np.ndarray) -> np.ndarray:
        """Token ids of image codes (any shape); FormatError for codes outside the codebook."""
        codes = np.asarray(codes)
        if codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise FormatError(
                f"image codes must lie in 0..{self.codebook_size - 1} for layout {self.name!r}, "
                f"got {int(codes.min())}..{int(codes.max())}"
            )
        return self._code_to_id[codes]

    def ids_to_codes(self, ids: np.ndarray) -> np.ndarray:
        """Image codes of token ids (any shape); -1 where an id is not an image code."""
        ids = np.asarray(ids, dtype=np.int64)
        inside = (ids >= 0) & (ids < self.vocab_size)
        return np.where(inside, self._id_to_code[np.where(inside, ids, 0)], -1)

    def image_code_mask(self) -> np.ndarray:
        """Boolean mask over the vocabulary, True at image-code ids."""
        return self._id_to_code >= 0

    def size_indicator_value(self, token_id: int) -> int | None:
        """n of a size-indicator id (pixels = n * pixels_per_indicator), None for other ids."""
        return self._id_to_indicator.get(int(token_id))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable description; `from_dict` rebuilds an equal layout."""
        return {
            "name": self.name,
            "vocab_size": self.vocab_size,
            "bos_id": self.bos_id,
            "start_image_id": self.start_image_id,
            "end_image_id": self.end_image_id,
            "end_line_id": self.end_line_id,
            "separator_id": self.separator_id,
            "pad_id": self.pad_id,
            "size_indicator_ids": list(self.size_indicator_ids),
            "code_ids": list(self.code_ids),
            "downsample": self.downsample,
            "pixels_per_indicator": self.pixels_per_indicator,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VocabLayout:
        """Inverse of `to_dict`; FormatError on missing or unknown keys."""
        expected = _DICT_KEYS
        missing, unknown = expected - set(data), set(data) - expected
        if missing or unknown:
            raise FormatError(
                f"bad layout description: missing {sorted(missing)}, unknown {sorted(unknown)}; "
                f"expected keys {sorted(expected)}"
            )
        values = dict(data)
        values["size_indicator_ids"] = tuple(int(i) for i in data["size_indicator_ids"])
        values["code_ids"] = tuple(int(i) for i in data["code_ids"])
        return cls(**values)

    def fingerprint(self) -> str:
        """Stable sha256 of `to_dict`, to refuse data built with another layout."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def get_layout(name: str, tokenizer: TextTokenizerLike | None = None, **options: int) -> VocabLayout:
    """Build the layout `name` ("lumina-mgpt", "lumina-mgpt-2" or "compact").

    The official layouts resolve their special tokens by name from `tokenizer` and check them
    against docs/FORMATS.md. Options: `max_indicator` (all layouts, default 128); for "compact" also
    `text_vocab_size` (default: the tokenizer's), `codebook_size` (8192), `downsample` (16) and
    `pixels_per_indicator` (32).
    """
    builders = {"lumina-mgpt": _v1_layout, "lumina-mgpt-2": _v2_layout, "compact": _compact_layout}
    if name not in builders:
        raise FormatError(f"unknown layout {name!r}; accepted: {', '.join(LAYOUT_NAMES)}")
    return builders[name](tokenizer, **options)


def _check_options(name: str, options: dict[str, int], accepted: tuple[str, ...]) -> None:
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise FormatError(
            f"unknown option(s) {unknown} for layout {name!r}; accepted: {', '.join(accepted)}"
        )


def _require_tokenizer(name: str, tokenizer: TextTokenizerLike | None, why: str) -> TextTokenizerLike:
    if tokenizer is None:
        raise FormatError(f"layout {name!r} needs its text tokenizer (tokenizer=...) {why}")
    return tokenizer


def _resolve(tokenizer: TextTokenizerLike, layout: str, token: str, expected_id: int | None = None) -> int:
    token_id = tokenizer.token_to_id(token)
    if token_id is None:
        raise FormatError(f"the text tokenizer has no token {token!r}, which layout {layout!r} requires")
    if expected_id is not None and token_id != expected_id:
        raise FormatError(
            f"the text tokenizer maps {token!r} to id {token_id}, but layout {layout!r} "
            f"expects id {expected_id} (docs/FORMATS.md); is this the right tokenizer?"
        )
    return int(token_id)


def _indicator_ids(
    tokenizer: TextTokenizerLike, layout: str, max_indicator: int, first_id: int | None
) -> tuple[int, ...]:
    """Ids of <reserved08800>.. up to max_indicator or the first one the tokenizer lacks."""
    ids = []
    for n in range(max_indicator + 1):
        token_id = tokenizer.token_to_id(size_indicator_token(n))
        if token_id is None:
            break
        expected = None if first_id is None else first_id + n
        ids.append(_resolve(tokenizer, layout, size_indicator_token(n), expected))
    if len(ids) < 2:
        raise FormatError(
            f"the text tokenizer lacks the size-indicator tokens {size_indicator_token(0)}, "
            f"{size_indicator_token(1)}, ... that layout {layout!r} requires"
        )
    return tuple(ids)


def _v1_layout(tokenizer: TextTokenizerLike | None, **options: int) -> VocabLayout:
    name = "lumina-mgpt"
    _check_options(name, options, ("max_indicator",))
    # The order of Chameleon's IMGIMG tokens is only known from the vocabulary itself.
    tok = _require_tokenizer(name, tokenizer, "to map image codes to their IMGIMG... token ids")
    if tok.vocab_size != V1_VOCAB_SIZE:
        raise FormatError(
            f"layout {name!r} expects a text tokenizer with {V1_VOCAB_SIZE} ids, got {tok.vocab_size}"
        )
    code_ids = tuple(_resolve(tok, name, chameleon_code_token(c)) for c in range(V1_CODEBOOK_SIZE))
    if sorted(code_ids) != list(range(*V1_CODE_ID_RANGE)):
        raise FormatError(
            f"layout {name!r} expects the IMGIMG code tokens at ids {V1_CODE_ID_RANGE[0]}.."
            f"{V1_CODE_ID_RANGE[1] - 1}; this tokenizer puts them elsewhere"
        )
    separator_id = _resolve(tok, name, SEPARATOR_TOKEN, V1_SEPARATOR_ID)
    pad_id = tok.token_to_id("<pad>")
    return VocabLayout(
        name=name,
        vocab_size=V1_VOCAB_SIZE,
        bos_id=tok.bos_id,
        start_image_id=_resolve(tok, name, START_IMAGE_TOKEN, V1_START_IMAGE_ID),
        end_image_id=_resolve(tok, name, END_IMAGE_TOKEN, V1_END_IMAGE_ID),
        end_line_id=_resolve(tok, name, END_LINE_TOKEN, V1_END_LINE_ID),
        separator_id=separator_id,
        pad_id=separator_id if pad_id is None else int(pad_id),
        size_indicator_ids=_indicator_ids(
            tok, name, options.get("max_indicator", DEFAULT_MAX_INDICATOR), V1_FIRST_INDICATOR_ID
        ),
        code_ids=code_ids,
        downsample=16,
    )


def _v2_layout(tokenizer: TextTokenizerLike | None, **options: int) -> VocabLayout:
    name = "lumina-mgpt-2"
    _check_options(name, options, ("max_indicator",))
    tok = _require_tokenizer(name, tokenizer, "to resolve the turn separator and size indicators")
    if tok.vocab_size > V2_VOCAB_SIZE or tok.vocab_size <= V2_END_LINE_ID:
        raise FormatError(
            f"layout {name!r} expects a Qwen-based text tokenizer with {V2_END_LINE_ID + 1}.."
            f"{V2_VOCAB_SIZE} ids, got {tok.vocab_size}"
        )
    endoftext_id = _resolve(tok, name, V2_ENDOFTEXT_TOKEN, V2_ENDOFTEXT_ID)
    return VocabLayout(
        name=name,
        vocab_size=V2_VOCAB_SIZE,
        # The official wrapper (xllmx `Tokenizer`) puts the tokenizer's EOS first when it names no BOS.
        bos_id=endoftext_id if tok.bos_id is None else tok.bos_id,
        start_image_id=_resolve(tok, name, START_IMAGE_TOKEN, V2_START_IMAGE_ID),
        end_image_id=_resolve(tok, name, END_IMAGE_TOKEN, V2_END_IMAGE_ID),
        end_line_id=_resolve(tok, name, END_LINE_TOKEN, V2_END_LINE_ID),
        separator_id=_resolve(tok, name, SEPARATOR_TOKEN),
        pad_id=endoftext_id,
        size_indicator_ids=_indicator_ids(
            tok, name, options.get("max_indicator", DEFAULT_MAX_INDICATOR), None
        ),
        code_ids=tuple(range(V2_FIRST_CODE_ID, V2_FIRST_CODE_ID + V2_CODEBOOK_SIZE)),
        downsample=8,
    )


def _compact_layout(tokenizer: TextTokenizerLike | None, **options: int) -> VocabLayout:
    name = "compact"
    accepted = ("text_vocab_size", "codebook_size", "downsample", "pixels_per_indicator", "max_indicator")
    _check_options(name, options, accepted)
    text_vocab_size = options.get("text_vocab_size", None if tokenizer is None else tokenizer.vocab_size)
    if text_vocab_size is None:
        raise FormatError(f"layout {name!r} needs a tokenizer or the option text_vocab_size")
    if tokenizer is not None and tokenizer.vocab_size != text_vocab_size:
        raise FormatError(
            f"text_vocab_size={text_vocab_size} disagrees with the tokenizer's {tokenizer.vocab_size} ids"
        )
    codebook_size = options.get("codebook_size", 8192)
    max_indicator = options.get("max_indicator", DEFAULT_MAX_INDICATOR)
    if min(text_vocab_size, codebook_size, max_indicator) < 1:
        raise FormatError("text_vocab_size, codebook_size and max_indicator must be >= 1")
    # Ids: text 0..T-1, codes T..T+K-1, then separator, start, end, eol, pad, indicators 0..N.
    first_special = text_vocab_size + codebook_size
    indicators = tuple(range(first_special + 5, first_special + 6 + max_indicator))
    return VocabLayout(
        name=name,
        vocab_size=indicators[-1] + 1,
        bos_id=None if tokenizer is None else tokenizer.bos_id,
        start_image_id=first_special + 1,
        end_image_id=first_special + 2,
        end_line_id=first_special + 3,
        separator_id=first_special,
        pad_id=first_special + 4,
        size_indicator_ids=indicators,
        code_ids=tuple(range(text_vocab_size, first_special)),
        downsample=options.get("downsample", 16),
        pixels_per_indicator=options.get("pixels_per_indicator", 32),
    )
