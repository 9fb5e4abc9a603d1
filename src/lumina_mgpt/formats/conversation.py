"""Conversations -> ids and loss labels (docs/FORMATS.md):

    [BOS] + tok(q1) + [SEP] + tok(a1) + [SEP] + tok(q2) + [SEP] + ...

with every `<|image|>` placeholder replaced by that image's Uni-Rep block. Labels are aligned
with ids (labels[i] is the target for position i, -100 = ignored); the trainer shifts them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from lumina_mgpt.errors import FormatError
from lumina_mgpt.formats.layout import VocabLayout
from lumina_mgpt.formats.prompts import drop_size_phrase
from lumina_mgpt.formats.unirep import encode_image

IMAGE_PLACEHOLDER = "<|image|>"
IGNORE_INDEX = -100
LOSS_MODES = ("response", "image")


class Encoder(Protocol):
    """What conversations need from a text tokenizer: ids without a BOS."""

    def encode(self, text: str) -> list[int]: ...


@dataclass(frozen=True)
class EncodedConversation:
    ids: np.ndarray  # int64 (length,)
    labels: np.ndarray  # int64 (length,), IGNORE_INDEX where not supervised


def _check_turns(turns: list[str], images: list[np.ndarray], want_answer_last: bool) -> None:
    if not turns or any(not isinstance(t, str) or not t.strip() for t in turns):
        raise FormatError("a conversation needs at least one turn and every turn must be non-empty text")
    if (len(turns) % 2 == 0) != want_answer_last:
        wanted = "end with an assistant answer (an even number of turns)" if want_answer_last else (
            "end with a human question (an odd number of turns)"
        )
        raise FormatError(f"turns alternate human, assistant, ...; got {len(turns)} turns, must {wanted}")
    placeholders = sum(t.count(IMAGE_PLACEHOLDER) for t in turns)
    if placeholders != len(images):
        raise FormatError(
            f"the turns hold {placeholders} {IMAGE_PLACEHOLDER} placeholders but {len(images)} images "
            "were given; there must be one image per placeholder, in order"
        )


def _encode_turns(
    turns: list[str], images: list[np.ndarray], tokenizer: Encoder, layout: VocabLayout, loss_mode: str
) -> tuple[np.ndarray, np.ndarray, int | None]:
    """ids, labels and the position of the first assistant <start-of-image> (None if none)."""
    ids: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    first_answer_image = None
    length = 0

    def add(piece: np.ndarray, supervised: np.ndarray | bool) -> None:
        nonlocal length
        ids.append(piece)
        labels.append(np.where(supervised, piece, IGNORE_INDEX))
        length += len(piece)

    if layout.bos_id is not None:
        add(np.asarray([layout.bos_id], np.int64), False)
    image_iter = iter(images)
    for index, turn in enumerate(turns):
        is_answer = index % 2 == 1
        parts = turn.split(IMAGE_PLACEHOLDER)
        for part_index, text in enumerate(parts):
            if part_index > 0:
                block = encode_image(next(image_iter), layout)
                if is_answer and first_answer_image is None:
                    first_answer_image = length
                # "image" mode supervises everything after <start-of-image>, which the sampler forces.
                supervised = np.full(len(block), is_answer)
                if loss_mode == "image":
                    supervised[0] = False
                add(block, supervised)
            if text:
                add(np.asarray(tokenizer.encode(text), np.int64), is_answer and loss_mode == "response")
        # In "image" mode only answers that contain an image learn to stop with SEP.
        sep_supervised = is_answer and (loss_mode == "response" or len(parts) > 1)
        add(np.asarray([layout.separator_id], np.int64), sep_supervised)
    return np.concatenate(ids), np.concatenate(labels), first_answer_image


def encode_conversation(
    turns: list[str],
    images: list[np.ndarray],
    tokenizer: Encoder,
    layout: VocabLayout,
    loss_mode: str,
    context_drop: float = 0.0,
    size_drop: float = 0.0,
    rng: random.Random | None = None,
) -> EncodedConversation:
    """Training ids and labels of a dialog (turns alternate human, assistant; it ends with an answer).

    loss_mode "response" (v1) supervises every assistant token including its SEP; "image" (v2)
    only the answer images' size indicators, codes, eols and end-of-image, plus the SEP after an
    answer that holds an image (the forced <start-of-image> is not supervised).
    With probability `context_drop` everything before the first answer image is removed (for
    classifier-free guidance); with probability `size_drop` a leading size-bearing text-to-image
    phrase in human turns is replaced by the no-size one. Both draws come from `rng`."""
    if loss_mode not in LOSS_MODES:
        raise FormatError(f"unknown loss_mode {loss_mode!r}; accepted: {', '.join(LOSS_MODES)}")
    for name, value in (("context_drop", context_drop), ("size_drop", size_drop)):
        if not 0.0 <= value <= 1.0:
            raise FormatError(f"{name} must lie in [0, 1], got {value}")
    if (context_drop > 0 or size_drop > 0) and rng is None:
        raise FormatError("context_drop and size_drop need a seeded rng (random.Random)")
    _check_turns(turns, images, want_answer_last=True)
    drop_context = context_drop > 0 and rng.random() < context_drop
    if size_drop > 0 and rng.random() < size_drop:
        turns = [drop_size_phrase(t) if i % 2 == 0 else t for i, t in enumerate(turns)]
    ids, labels, first_answer_image = _encode_turns(turns, images, tokenizer, layout, loss_mode)
    if drop_context and first_answer_image is not None:
        ids, labels = ids[first_answer_image:], labels[first_answer_image:]
    return EncodedConversation(ids=ids, labels=labels)


def encode_generation_prompt(
    turns_so_far: list[str], images: list[np.ndarray], tokenizer: Encoder, layout: VocabLayout
) -> np.ndarray:
    """Ids of a dialog that ends with a human question, closed by its SEP: the model's prompt."""
    _check_turns(turns_so_far, images, want_answer_last=False)
    ids, _, _ = _encode_turns(turns_so_far, images, tokenizer, layout, "response")
    return ids
