"""Conversations -> ids and loss labels, with hand-computed expectations, drops and errors."""

import random

import numpy as np
import pytest

from lumina_mgpt.errors import FormatError
from lumina_mgpt.formats import (
    encode_conversation,
    encode_generation_prompt,
    get_layout,
    image_block_length,
    image_map_pair_prompt,
    image_to_image_prompt,
    text_to_image_prompt,
)
from vocab_fixtures import v1_tokenizer, v2_tokenizer

X = -100  # ignored label


class CharTokenizer:
    """One id per character (its code point), so expected ids can be written by hand."""

    vocab_size = 256
    bos_id = 1

    def encode(self, text):
        return [ord(c) for c in text]


# compact: text 0..255, codes 256..271, SEP 272, start 273, end 274, eol 275, pad 276,
# size indicators n = 0..4 at 277..281. Grids of 2x2 codes are 32x32 pixels: n = 1 (278).
LAYOUT = get_layout("compact", CharTokenizer(), codebook_size=16, downsample=16, max_indicator=4)
FIRST = np.array([[0, 1], [2, 3]])
SECOND = np.array([[4, 5], [6, 7]])
TURNS = ["a<|image|>", "b<|image|>", "c", "d"]
IDS = (
    [1, 97, 273, 278, 278, 256, 257, 275, 258, 259, 275, 274, 272]
    + [98, 273, 278, 278, 260, 261, 275, 262, 263, 275, 274, 272]
    + [99, 272, 100, 272]
)


def encode(turns=TURNS, images=(FIRST, SECOND), loss_mode="response", **drops):
    return encode_conversation(list(turns), list(images), CharTokenizer(), LAYOUT, loss_mode, **drops)


def test_response_mode_supervises_every_answer_token():
    encoded = encode()
    assert encoded.ids.dtype == np.int64 and encoded.ids.tolist() == IDS
    assert encoded.labels.tolist() == (
        [X] * 13 + [98, 273, 278, 278, 260, 261, 275, 262, 263, 275, 274, 272] + [X, X, 100, 272]
    )


def test_image_mode_supervises_answer_images_after_their_start():
    encoded = encode(loss_mode="image")
    assert encoded.ids.tolist() == IDS
    assert encoded.labels.tolist() == (
        [X] * 13 + [X, X, 278, 278, 260, 261, 275, 262, 263, 275, 274, 272] + [X, X, X, X]
    )


def test_context_drop_keeps_only_the_answer_image_onwards():
    encoded = encode(context_drop=1.0, rng=random.Random(0))
    assert encoded.ids.tolist() == IDS[14:]
    assert encoded.labels.tolist() == IDS[14:24] + [272, X, X, 100, 272]
    # Without an answer image there is nothing to keep the image of: no change.
    plain = encode(["a<|image|>", "b"], [FIRST], context_drop=1.0, rng=random.Random(0))
    assert plain.ids.tolist() == IDS[:14] + [272]


def test_size_drop_rewrites_the_size_phrase_of_questions():
    question = text_to_image_prompt("cat", 32, 32)
    dropped = encode([question, "<|image|>"], [FIRST], size_drop=1.0, rng=random.Random(0))
    no_size = encode([text_to_image_prompt("cat", 32, 32, include_size=False), "<|image|>"], [FIRST])
    assert dropped.ids.tolist() == no_size.ids.tolist()
    kept = encode([question, "<|image|>"], [FIRST], size_drop=0.0)
    assert kept.ids[1 : 1 + len(question)].tolist() == [ord(c) for c in question]
    other = encode(["Draw: " + question, "<|image|>"], [FIRST], size_drop=1.0, rng=random.Random(0))
    assert len(other.ids) == len(kept.ids) + len("Draw: ")


@pytest.mark.parametrize("option", ["context_drop", "size_drop"])
def test_drops_are_seeded_and_happen_at_the_asked_rate(option):
    question = text_to_image_prompt("cat", 32, 32)

    def outcomes(seed):
        rng = random.Random(seed)
        return [len(encode([question, "<|image|>"], [FIRST], **{option: 0.1, "rng": rng}).ids) for _ in range(2000)]

    first = outcomes(5)
    assert first == outcomes(5) and first != outcomes(6)
    full = len(encode([question, "<|image|>"], [FIRST]).ids)
    dropped = sum(length < full for length in first)
    assert 140 <= dropped <= 260  # 200 expected; 4.7 standard deviations either side


def test_generation_prompt_ends_with_the_question_separator():
    prompt = encode_generation_prompt(["a<|image|>", "b<|image|>", "c"], [FIRST, SECOND], CharTokenizer(), LAYOUT)
    assert prompt.tolist() == IDS[:27]


def test_v1_text_to_image_conversation_with_the_chameleon_like_tokenizer():
    tokenizer = v1_tokenizer()
    layout = get_layout("lumina-mgpt", tokenizer)
    question = text_to_image_prompt("a red cube", 512, 256)
    assert question == "Generate an image of 512x256 according to the following prompt:\na red cube"
    grid = np.zeros((16, 32), np.int64)
    encoded = encode_conversation([question, "<|image|>"], [grid], tokenizer, layout, "response")
    question_ids = tokenizer.encode(question)
    assert encoded.ids[0] == 0 and encoded.ids[1 + len(question_ids)] == 8710 and encoded.ids[-1] == 8710
    assert len(encoded.ids) == 1 + len(question_ids) + 1 + image_block_length(512, 256, layout) + 1
    assert (encoded.labels[: 2 + len(question_ids)] == X).all()
    assert np.array_equal(encoded.labels[2 + len(question_ids) :], encoded.ids[2 + len(question_ids) :])



def test_v2_sequences_start_with_endoftext_as_the_official_code():
    """Qwen names no BOS, so the official v2 wrapper puts its EOS, <|endoftext|> (151643), first: in the
    generation prompt and in every training conversation."""
    tokenizer = v2_tokenizer()
    assert tokenizer.bos_id is None
    layout = get_layout("lumina-mgpt-2", tokenizer)
    question = text_to_image_prompt("a red cube", 512, 256)
    question_ids = tokenizer.encode(question)
    prompt = encode_generation_prompt([question], [], tokenizer, layout)
    assert prompt.tolist() == [151_643, *question_ids, 151_667]
    grid = np.zeros((32, 64), np.int64)
    encoded = encode_conversation([question, "<|image|>"], [grid], tokenizer, layout, "image")
    assert encoded.ids[: len(prompt)].tolist() == prompt.tolist()
    assert len(encoded.ids) == len(prompt) + image_block_length(512, 256, layout) + 1
    assert encoded.labels[0] == X  # BOS is context, never a target

def test_dual_panel_prompts_are_the_released_strings():
    assert image_map_pair_prompt("a dog", 768, 1536, "depth map") == (
        "Generate a dual-panel image of 768x1536 where the <lower half> displays a <depth map>, "
        "while the <upper half> retains the original image for direct visual comparison:\na dog"
    )
    assert image_to_image_prompt("a dog", 768, 1536, "canny edge map") == (
        "Generate a dual-panel image of 768x1536 where the <upper half> displays a <canny edge map>, "
        "while the <lower half> retains the original image for direct visual comparison:\na dog"
    )
    accepted = "depth map, canny edge map, hed edge map, pose estimation map"
    with pytest.raises(FormatError, match=f"unknown map 'normal map'; accepted: {accepted}"):
        image_map_pair_prompt("a dog", 768, 1536, "normal map")
    with pytest.raises(FormatError, match="bad condition"):
        image_to_image_prompt("a dog", 768, 1536, "<x>")


@pytest.mark.parametrize(
    "turns, images, kwargs, message",
    [
        (["a<|image|>", "b"], [], {}, "1 <\\|image\\|> placeholders but 0 images"),
        (["a", " "], [], {}, "every turn must be non-empty"),
        (["a", "b", "c"], [], {}, "got 3 turns, must end with an assistant answer"),
        (["a", "b"], [], {"loss_mode": "all"}, "unknown loss_mode 'all'; accepted: response, image"),
        (["a", "b"], [], {"context_drop": 0.1}, "need a seeded rng"),
        (["a", "b"], [], {"size_drop": 2.0, "rng": random.Random(0)}, "size_drop must lie in \\[0, 1\\]"),
        (["a", "<|image|>"], [np.zeros((3, 2), np.int64)], {}, "grid height of 3 latent cells"),
    ],
)
def test_bad_conversations_raise_format_error(turns, images, kwargs, message):
    with pytest.raises(FormatError, match=message):
        encode(turns, images, **kwargs)
    with pytest.raises(FormatError, match="must end with a human question"):
        encode_generation_prompt(["a", "b"], [], CharTokenizer(), LAYOUT)
