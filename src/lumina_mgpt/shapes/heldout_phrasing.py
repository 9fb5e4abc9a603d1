"""Evaluation-only phrasings of shapes requests: styles the training generator (phrasing.py) never
produces, so that a score on them measures how well a model copes with writing it has not seen.

Import this module only from evaluation code and tests: training data must not draw from it. Each
style uses a word or template no training style uses ("could you render ... for me", "objects: ...;
layout: ...", "there should be", British spellings "colour" and "disc", clauses "which has ... to its
left", a verbose scene description, "i'd like to see", keyboard-slip typos, canonical captions shouted
with "!!", one object a line after "- ", "would you be able to produce", "can i get"); tests/test_shapes_phrasing.py
checks that no held-out string is ever a training one.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from lumina_mgpt.errors import DataError
from lumina_mgpt.shapes.captions import NUMBER_WORDS, canonical_caption, noun_phrase
from lumina_mgpt.shapes.spec import ObjectGroup, Spec

# Relation wordings of the held-out styles (training says "higher than", never "higher up than").
RELATION_WORDS = {
    "left of": "further left than",
    "right of": "further right than",
    "above": "higher up than",
    "below": "further down than",
}
# "... which has {subject} {where}": the subject's place seen from the reference.
CLAUSE_WHERE = {"left of": "to its left", "right of": "to its right", "above": "above it", "below": "below it"}
LIST_RELATIONS = {"left of": "left of", "right of": "right of", "above": "above", "below": "below"}
# Letters next to each other on a QWERTY keyboard: the slip training typos (swap, drop, double) never make.
KEYBOARD_NEIGHBOURS = {
    "a": "s", "b": "v", "c": "x", "d": "f", "e": "r", "g": "h", "h": "j", "i": "o", "k": "l", "l": "k",
    "n": "m", "o": "p", "p": "o", "q": "w", "r": "t", "s": "d", "t": "y", "u": "i", "w": "e", "y": "u",
}  # fmt: skip


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _described(spec: Spec, name_group: Callable[[ObjectGroup], str]) -> str:
    """The spec in words, each group named by `name_group`, the relation in held-out wording."""
    names = [name_group(group) for group in spec.groups]
    relation = spec.relation
    if relation is not None:
        return f"{names[relation.subject]} {RELATION_WORDS[relation.name]} {names[relation.reference]}"
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def render_request(spec: Spec, rng: np.random.Generator) -> str:
    return f"could you render {_described(spec, noun_phrase)} for me?"


def object_list(spec: Spec, rng: np.random.Generator) -> str:
    """'objects: 2 red circles; 1 square' (plus '; layout: red circle left of square')."""
    items = [f"{group.count} {noun_phrase(group, with_count=False)}" for group in spec.groups]
    text = "objects: " + "; ".join(items)
    relation = spec.relation
    if relation is not None:
        subject = noun_phrase(spec.groups[relation.subject], with_count=False)
        reference = noun_phrase(spec.groups[relation.reference], with_count=False)
        text += f"; layout: {subject} {LIST_RELATIONS[relation.name]} {reference}"
    return text


def there_should_be(spec: Spec, rng: np.random.Generator) -> str:
    relation = spec.relation
    if relation is not None:
        subject = noun_phrase(spec.groups[relation.subject])
        reference = noun_phrase(spec.groups[relation.reference])
        return f"there should be {subject}, and it should sit {RELATION_WORDS[relation.name]} {reference}"
    names = [noun_phrase(group) for group in spec.groups]
    return "there should be " + " and also ".join(names)


def british(spec: Spec, rng: np.random.Generator) -> str | None:
    """'colour', 'coloured' and 'disc': only for specs that name a color or a circle."""
    if not any(group.color or group.shape == "circle" for group in spec.groups):
        return None

    def name(group: ObjectGroup) -> str:
        noun = "disc" if group.shape == "circle" else group.shape
        noun = noun if group.count == 1 else noun + "s"
        count = "a" if group.count == 1 else NUMBER_WORDS[group.count]
        if group.color is None:
            return f"{count} {noun}"
        return _pick(rng, (f"{count} {noun} coloured {group.color}", f"{count} {noun} in the colour {group.color}"))

    return _described(spec, name)


def subordinate_clause(spec: Spec, rng: np.random.Generator) -> str:
    relation = spec.relation
    if relation is not None:
        subject = noun_phrase(spec.groups[relation.subject])
        reference = noun_phrase(spec.groups[relation.reference])
        return f"{reference}, which has {subject} {CLAUSE_WHERE[relation.name]}"
    return f"a scene in which you can see {_described(spec, noun_phrase)}"


def verbose(spec: Spec, rng: np.random.Generator) -> str:
    return (
        "i am imagining a plain light background, and on it i picture "
        f"{_described(spec, noun_phrase)}, with nothing else around"
    )


def would_like(spec: Spec, rng: np.random.Generator) -> str:
    return f"i'd like to see {_described(spec, noun_phrase)}, thanks"


def keyboard_slip(spec: Spec, rng: np.random.Generator) -> str:
    """The canonical caption with one letter of a long word replaced by its keyboard neighbour."""
    words = canonical_caption(spec).split(" ")
    spots = [(i, j) for i, word in enumerate(words) if len(word) >= 4 for j, ch in enumerate(word) if ch in KEYBOARD_NEIGHBOURS]
    i, j = spots[int(rng.integers(len(spots)))]
    words[i] = words[i][:j] + KEYBOARD_NEIGHBOURS[words[i][j]] + words[i][j + 1 :]
    return " ".join(words)


def shouted(spec: Spec, rng: np.random.Generator) -> str:
    return canonical_caption(spec).upper() + "!!"


# The three styles below were added on 2026-12-01, after the requests stage's training styles (lists and
# requests in context) were written and before any model trained on those was evaluated: they measure
# writing that no stage has seen.
def bulleted(spec: Spec, rng: np.random.Generator) -> str:
    """One object a line, each after "- ", and a last line for the relation."""
    lines = [f"- {noun_phrase(group)}" for group in spec.groups]
    relation = spec.relation
    if relation is not None:
        subject = noun_phrase(spec.groups[relation.subject])
        reference = noun_phrase(spec.groups[relation.reference])
        lines.append(f"- {subject} {RELATION_WORDS[relation.name]} {reference}")
    return "\n".join(lines)


def able_to_produce(spec: Spec, rng: np.random.Generator) -> str:
    return f"would you be able to produce {_described(spec, noun_phrase)}? much appreciated"


def can_i_get(spec: Spec, rng: np.random.Generator) -> str:
    return f"can i get {_described(spec, noun_phrase)}?"


# name -> (style, whether parse_caption reads it back: only canonical captions under case and punctuation).
HELDOUT_STYLES: dict[str, tuple[Callable[[Spec, np.random.Generator], str | None], bool]] = {
    "render_request": (render_request, False),
    "object_list": (object_list, False),
    "there_should_be": (there_should_be, False),
    "british": (british, False),
    "subordinate_clause": (subordinate_clause, False),
    "verbose": (verbose, False),
    "would_like": (would_like, False),
    "keyboard_slip": (keyboard_slip, False),
    "shouted": (shouted, True),
    "bulleted": (bulleted, False),
    "able_to_produce": (able_to_produce, False),
    "can_i_get": (can_i_get, False),
}


def heldout_phrase(spec: Spec, style: str, rng: np.random.Generator) -> str | None:
    """`spec` in the held-out `style` (one of HELDOUT_STYLES), or None where the style cannot say it."""
    if style not in HELDOUT_STYLES:
        raise DataError(f"unknown held-out style {style!r}; accepted: {', '.join(HELDOUT_STYLES)}")
    return HELDOUT_STYLES[style][0](spec, rng)


def heldout_phrase_cycling(spec: Spec, position: int, rng: np.random.Generator) -> tuple[str, str]:
    """(style, text) for the `position`-th evaluation prompt: styles taken in turn, skipping any that
    cannot say `spec`, so a set of prompts covers every style about equally."""
    names = list(HELDOUT_STYLES)
    for offset in range(len(names)):
        style = names[(position + offset) % len(names)]
        text = heldout_phrase(spec, style, rng)
        if text is not None:
            return style, text
    raise DataError(f"no held-out style can phrase {spec}")
