"""Phrasings of shapes requests: canonical captions and their parser, the training styles, and the
held-out evaluation styles that training never produces."""

from __future__ import annotations

import re

import numpy as np
import pytest

from lumina_mgpt.errors import DataError
from lumina_mgpt.shapes import phrasing
from lumina_mgpt.shapes.captions import (
    canonical_caption,
    describe,
    parse_caption,
    sample_spec,
    spec_meaning,
)
from lumina_mgpt.shapes.dual_panel import EDIT_KINDS, sample_edit
from lumina_mgpt.shapes.heldout_phrasing import HELDOUT_STYLES, heldout_phrase, heldout_phrase_cycling
from lumina_mgpt.shapes.phrasing import (
    CONTENT_WORDS,
    NEUTRAL_WORDS,
    SHAPE_NOUNS,
    distractor,
    edit_instruction,
    listed,
    phrase,
    written_request,
)
from lumina_mgpt.shapes.prompts import normalize_caption
from lumina_mgpt.shapes.spec import CATEGORIES, COLORS, ObjectGroup, Relation, Spec

# Whole words that name each relation in training prompts; a prompt must use its own and not the opposite's.
RELATION_WORDS = {
    "left of": {"left"},
    "right of": {"right"},
    "above": {"above", "over", "top", "higher"},
    "below": {"below", "beneath", "under", "underneath", "lower"},
}
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def _specs(count: int, seed: int) -> list[Spec]:
    rng = np.random.default_rng(seed)
    return [sample_spec(rng, CATEGORIES[i % len(CATEGORIES)]) for i in range(count)]


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


# --- canonical captions --------------------------------------------------------------------------


def test_canonical_captions_of_every_category_parse_back_to_the_same_meaning():
    for spec in _specs(3000, seed=0):
        caption = canonical_caption(spec)
        parsed = parse_caption(caption)
        assert parsed is not None, caption
        assert spec_meaning(parsed) == spec_meaning(spec), caption
        assert canonical_caption(parsed) == caption


def test_canonical_caption_is_one_deterministic_string_per_spec():
    red_left = Spec("position", (ObjectGroup("circle", "red"), ObjectGroup("square")), Relation(0, "left of", 1))
    assert canonical_caption(red_left) == "a red circle to the left of a square"
    counted = Spec("counting", (ObjectGroup("triangle", "orange", 3, exact=True),))
    assert canonical_caption(counted) == "three orange triangles"
    pair = Spec("color_attr", (ObjectGroup("square", "orange"), ObjectGroup("circle", "blue")))
    assert canonical_caption(pair) == "an orange square and a blue circle"


def test_parser_reads_case_punctuation_and_numerals_but_nothing_else():
    assert parse_caption("Three RED circles!") == Spec("counting", (ObjectGroup("circle", "red", 3, exact=True),))
    assert parse_caption(' "A circle beneath a square." ').relation == Relation(0, "below", 1)
    assert parse_caption("2 squares") == Spec("counting", (ObjectGroup("square", None, 2, exact=True),))
    for text in ("two circle", "a circles", "a red circle and", "a pink circle", "hello", "a circle and a square and a circle",
                 "two circles to the left of a square", "please draw a red circle"):  # fmt: skip
        assert parse_caption(text) is None, text


def test_specs_without_a_canonical_form_are_refused():
    for group in (ObjectGroup("circle", None, 2, exact=False), ObjectGroup("circle", None, 1, exact=True)):
        with pytest.raises(DataError, match="accepted"):
            canonical_caption(Spec("counting", (group,)))


def test_meaning_ignores_group_order_and_relation_direction_only():
    circle, square = ObjectGroup("circle", "red"), ObjectGroup("square")
    left = Spec("position", (circle, square), Relation(0, "left of", 1))
    right = Spec("position", (square, circle), Relation(0, "right of", 1))
    above = Spec("position", (circle, square), Relation(0, "above", 1))
    assert spec_meaning(left) == spec_meaning(right) != spec_meaning(above)
    assert spec_meaning(Spec("two_object", (circle, square))) == spec_meaning(Spec("two_object", (square, circle)))
    assert spec_meaning(Spec("colors", (circle,))) == spec_meaning(Spec("single_object", (circle,)))
    assert spec_meaning(Spec("colors", (circle,))) != spec_meaning(Spec("colors", (ObjectGroup("circle", "blue"),)))


# --- training phrasing ---------------------------------------------------------------------------


def test_training_phrasing_is_deterministic_and_varied():
    spec = Spec("position", (ObjectGroup("circle", "blue"), ObjectGroup("triangle")), Relation(1, "right of", 0))
    first = [phrase(spec, np.random.default_rng([3, i])) for i in range(600)]
    assert first == [phrase(spec, np.random.default_rng([3, i])) for i in range(600)]
    assert len(set(first)) > 400
    text = "\n".join(first)
    for feature in ("TRIANGLE", "Triangle", "to the right of a blue circle, there is", "in blue", "blue-colored",
                    "that is blue", "on the right side of", "please draw", "i want a picture with", " 1 ", "disk",
                    "beside"):  # fmt: skip
        assert feature in text, feature
    assert any(canonical in first for canonical in {describe(spec, np.random.default_rng(i)) for i in range(40)})


def test_requests_are_jotted_as_lists_or_set_in_context():
    rng = np.random.default_rng(12)
    texts = [written_request(spec, rng) for spec in _specs(1500, seed=6)]
    joined = "\n".join(texts).lower()
    for feature in (" / ", " | ", "; ", "shapes: ", " x2", "(3)", "for a logo:", "on a white background", "position: "):
        assert feature in joined, feature
    share = sum(any(opener in t.lower() for opener in phrasing.CONTEXT_OPENERS) for t in texts) / len(texts)
    assert 0.1 < share < 0.4
    spec = Spec("counting", (ObjectGroup("circle", "red", 2, exact=True),))
    assert {listed(spec, np.random.default_rng(i)) for i in range(200)} >= {"2 red circles", "red circles x2"}


def test_numerals_and_number_words_both_count():
    spec = Spec("counting", (ObjectGroup("square", "green", 3, exact=True),))
    words = set().union(*(_words(phrase(spec, np.random.default_rng(i))) for i in range(300)))
    assert {"3", "three", "squares", "boxes"} <= words and "box" not in words  # plural agreement


@pytest.mark.parametrize("write", [phrase, written_request], ids=["phrase", "written_request"])
def test_training_prompts_name_every_color_count_shape_and_the_right_relation(monkeypatch, write):
    monkeypatch.setattr(phrasing, "TYPO_SHARE", 0.0)  # typos are checked apart
    rng = np.random.default_rng(11)
    for spec in _specs(1500, seed=5):
        text = write(spec, rng)
        words = set(re.findall(r"[a-z]+|[0-9]+", text.lower()))  # "4x squares": 4
        for group in spec.groups:
            if group.color:
                assert group.color in words, text
            nouns = {word for pair in SHAPE_NOUNS[group.shape] for noun in pair for word in noun.split()}
            assert words & nouns, text
            if group.count > 1:
                assert words & {str(group.count), phrasing.NUMBER_WORDS[group.count]}, text
        if spec.relation is not None:
            assert words & RELATION_WORDS[spec.relation.name], text
            assert not words & RELATION_WORDS[OPPOSITE[spec.relation.name]], text


def test_typos_change_one_word_slightly():
    rng = np.random.default_rng(0)
    text = "a purple triangle above a yellow square"
    for _ in range(50):
        noisy = phrasing.add_typo(rng, text)
        changed = [(a, b) for a, b in zip(text.split(), noisy.split()) if a != b]
        assert len(changed) == 1 and abs(len(changed[0][0]) - len(changed[0][1])) <= 1


def test_edit_instructions_name_the_target_and_what_to_do():
    rng = np.random.default_rng(2)
    seen = set()
    for kind in EDIT_KINDS:
        for _ in range(60):
            edit = sample_edit(rng, kind, 64, 64)
            text = edit_instruction(edit, rng, typos=False)
            seen.add(text)
            words = _words(text)
            assert edit.target.color in words, text
            assert words & {w for pair in SHAPE_NOUNS[edit.target.shape] for noun in pair for w in noun.split()}, text
            if kind == "recolor":
                colors_named = [word for word in re.findall(r"[a-z]+", text.lower()) if word in COLORS]
                assert colors_named == [edit.target.color, edit.new_color], text
            if kind == "move":
                direction_words = {"left": {"left", "leftwards"}, "right": {"right", "rightwards"},
                                   "up": {"up", "upwards", "higher", "top"}, "down": {"down", "downwards", "lower", "bottom"}}  # fmt: skip
                assert words & direction_words[edit.direction], text
    assert len(seen) > 200


# --- held-out phrasing ---------------------------------------------------------------------------


def test_heldout_styles_are_never_produced_by_the_training_generator():
    specs = _specs(300, seed=21)
    training = set()
    for number, spec in enumerate(specs):
        rng = np.random.default_rng([9, number])
        training.update(normalize_caption(write(spec, rng)) for _ in range(150) for write in (phrase, written_request))
    assert len(HELDOUT_STYLES) >= 6
    produced = {style: 0 for style in HELDOUT_STYLES}
    for number, spec in enumerate(specs):
        for style in HELDOUT_STYLES:
            text = heldout_phrase(spec, style, np.random.default_rng(number))
            if text is None:
                continue
            produced[style] += 1
            assert normalize_caption(text) not in training, (style, text)
    assert all(produced.values()), produced


def test_parseable_heldout_styles_parse_back_and_the_others_keep_the_specs_words():
    rng = np.random.default_rng(4)
    for spec in _specs(600, seed=8):
        for style, (_, parseable) in HELDOUT_STYLES.items():
            text = heldout_phrase(spec, style, rng)
            if text is None:
                continue
            if parseable:
                assert spec_meaning(parse_caption(text)) == spec_meaning(spec), text
            elif style != "keyboard_slip":
                assert all(g.color in _words(text) for g in spec.groups if g.color), text


def test_heldout_cycling_covers_every_style_and_refuses_unknown_ones():
    styles = {heldout_phrase_cycling(spec, i, np.random.default_rng(i))[0] for i, spec in enumerate(_specs(90, 3))}
    assert styles == set(HELDOUT_STYLES)
    with pytest.raises(DataError, match="accepted"):
        heldout_phrase(_specs(1, 0)[0], "pirate", np.random.default_rng(0))


def test_distractor_words_name_nothing_and_none_is_a_word_of_the_heldout_styles():
    rng = np.random.default_rng(5)
    made_up = [word for word in (distractor(rng) for _ in range(3000)) if word not in NEUTRAL_WORDS]
    assert len(made_up) > 1000 and len(set(made_up)) > 900
    assert not any(content in word for word in made_up for content in CONTENT_WORDS)
    heldout_words = ("render", "colour", "disc", "objects", "layout", "should", "further", "higher", "like to see",
                     "for me", "which has", "scene", "imagin", "picture ", "thank", "could", "produce", "appreciat",
                     "able to", "can i get", "- ")  # fmt: skip
    assert not any(marker in word for word in NEUTRAL_WORDS for marker in heldout_words)
    jotted = (*phrasing.LIST_HEADERS, *phrasing.LIST_RELATION_HEADERS, *phrasing.CONTEXT_OPENERS, *phrasing.CONTEXT_CLOSERS)
    assert not any(marker in text for text in jotted for marker in heldout_words if marker != "- ")
    assert not any(content in word.split() for word in NEUTRAL_WORDS for content in CONTENT_WORDS)
    prompts = [phrase(spec, np.random.default_rng([3, n])) for n, spec in enumerate(_specs(400, seed=2))]
    wrapped = [p for p in prompts if any(p.lower().strip().startswith(w + " ") or p.lower().strip().endswith(" " + w)
                                         for w in NEUTRAL_WORDS)]  # fmt: skip
    assert 0.02 < len(wrapped) / len(prompts) < 0.2
