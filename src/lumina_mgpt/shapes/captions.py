"""Random specs for GenEval's six categories and natural captions that describe them.

Each category has several phrasings; the same spec can be described in many ways, which is what
keeps the caption space large enough to hold out an evaluation set (see prompts.py).
"""

from __future__ import annotations

import re

import numpy as np

from lumina_mgpt.errors import DataError
from lumina_mgpt.shapes.spec import (
    CATEGORIES,
    COLORS,
    RELATIONS,
    SHAPES,
    ObjectGroup,
    Relation,
    Spec,
)

NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
COUNTING_RANGE = (2, 4)

SINGLE_TEMPLATES = (
    "{a}",
    "a picture of {a}",
    "an image of {a}",
    "{a} on a plain background",
    "a single {bare}",
    "one {bare}",
    "there is {a}",
    "just {a}",
)
COLOR_TEMPLATES = (
    "a {shape} that is {color}",
    "a {shape} colored {color}",
    "{color_article} {color}-colored {shape}",
    "a {shape} in {color}",
    "a {shape} painted {color}",
    "a {shape} whose color is {color}",
    "a {shape}, {color} in color",
    "a picture of a {shape} that is {color}",
    "an image of a {shape} colored {color}",
    "{color_article} {color} colored {shape} on a plain background",
    "a {shape} filled with {color}",
    "one {shape}, {color}",
)
# Shared by two_object (at most one color named) and color_attr (both colors named), so the two
# categories never produce the same caption.
PAIR_TEMPLATES = (
    "{first} and {second}",
    "a picture of {first} and {second}",
    "an image with {first} and {second}",
    "{first} together with {second}",
    "{first} as well as {second}",
    "both {first} and {second}",
    "{first} and {second} on a plain background",
)
COUNTING_TEMPLATES = (
    "{number} {plural}",
    "exactly {number} {plural}",
    "a picture of {number} {plural}",
    "an image with {number} {plural}",
    "there are {number} {plural}",
    "{number} {plural} on a plain background",
    "{digit} {plural}",
)
POSITION_TEMPLATES = (
    "{subject} {relation} {reference}",
    "{subject} is {relation} {reference}",
    "{subject} placed {relation} {reference}",
    "a picture of {subject} {relation} {reference}",
    "an image with {subject} {relation} {reference}",
)
RELATION_PHRASES = {
    "left of": ("to the left of", "left of", "on the left of"),
    "right of": ("to the right of", "right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "beneath", "under"),
}


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def noun_phrase(group: ObjectGroup, *, with_count: bool = True) -> str:
    """'a red circle', 'an orange square', 'three triangles' ... (without count: 'red circle')."""
    bare = group.shape if group.color is None else f"{group.color} {group.shape}"
    if group.count == 1:
        return f"{_article(bare)} {bare}" if with_count else bare
    plural = f"{bare}s"
    return f"{NUMBER_WORDS[group.count]} {plural}" if with_count else plural


def sample_spec(rng: np.random.Generator, category: str) -> Spec:
    """A random spec of `category` (one of CATEGORIES)."""
    if category not in CATEGORIES:
        raise DataError(f"unknown category {category!r}; accepted: {', '.join(CATEGORIES)}")
    colors = list(COLORS)
    if category in ("single_object", "colors"):
        shape = _pick(rng, SHAPES)
        named = category == "colors" or rng.random() < 0.5
        return Spec(category, (ObjectGroup(shape, _pick(rng, colors) if named else None),))
    if category == "counting":
        count = int(rng.integers(COUNTING_RANGE[0], COUNTING_RANGE[1] + 1))
        color = _pick(rng, colors) if rng.random() < 0.5 else None
        return Spec(category, (ObjectGroup(_pick(rng, SHAPES), color, count, exact=True),))
    if category in ("two_object", "color_attr"):
        first_shape, second_shape = (str(s) for s in rng.choice(SHAPES, size=2, replace=False))
        first_color, second_color = (str(c) for c in rng.choice(colors, size=2, replace=False))
        if category == "two_object":
            # GenEval's two_object names two classes; naming at most one color keeps it apart
            # from color_attr while widening the caption space.
            which = int(rng.integers(3))
            first_color = first_color if which == 1 else None
            second_color = second_color if which == 2 else None
        groups = (ObjectGroup(first_shape, first_color), ObjectGroup(second_shape, second_color))
        return Spec(category, groups)
    return _sample_position_spec(rng)


def _sample_position_spec(rng: np.random.Generator) -> Spec:
    """Two single objects and a relation; the two groups never match the same object."""
    colors = list(COLORS)
    first_shape, second_shape = (str(s) for s in rng.choice(SHAPES, size=2, replace=True))
    first_color, second_color = (str(c) for c in rng.choice(colors, size=2, replace=False))
    if first_shape != second_shape:
        first_color = first_color if rng.random() < 0.5 else None
        second_color = second_color if rng.random() < 0.5 else None
    groups = (ObjectGroup(first_shape, first_color), ObjectGroup(second_shape, second_color))
    return Spec("position", groups, Relation(0, _pick(rng, RELATIONS), 1))


def describe(spec: Spec, rng: np.random.Generator) -> str:
    """A natural caption for `spec`, phrased at random among the category's templates."""
    groups = spec.groups
    if spec.category == "single_object":
        bare = noun_phrase(groups[0], with_count=False)
        return _pick(rng, SINGLE_TEMPLATES).format(a=noun_phrase(groups[0]), bare=bare)
    if spec.category == "colors":
        color = groups[0].color
        if color is None:
            raise DataError("a colors spec must name the object's color")
        return _pick(rng, COLOR_TEMPLATES).format(
            shape=groups[0].shape, color=color, color_article=_article(color)
        )
    if spec.category == "counting":
        group = groups[0]
        return _pick(rng, COUNTING_TEMPLATES).format(
            number=NUMBER_WORDS[group.count],
            digit=group.count,
            plural=noun_phrase(group, with_count=False),
        )
    if spec.category in ("two_object", "color_attr"):
        return _pick(rng, PAIR_TEMPLATES).format(
            first=noun_phrase(groups[0]), second=noun_phrase(groups[1])
        )
    relation = spec.relation
    if relation is None:
        raise DataError("a position spec needs a relation")
    return _pick(rng, POSITION_TEMPLATES).format(
        subject=noun_phrase(groups[relation.subject]),
        relation=_pick(rng, RELATION_PHRASES[relation.name]),
        reference=noun_phrase(groups[relation.reference]),
    )


# --- the canonical caption -------------------------------------------------------------------------
# One string per spec, in the first template of each category above (the form the embedded model was
# trained to draw): "a red circle", "three circles", "a red circle and a square",
# "a red circle to the left of a square". It is what captioning answers and what rewriting writes.
CANONICAL_RELATION_PHRASES = {name: phrases[0] for name, phrases in RELATION_PHRASES.items()}
INVERSE_RELATIONS = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def canonical_caption(spec: Spec) -> str:
    """The canonical caption of `spec` (parse_caption reads it back to a spec of the same meaning).

    Groups of one object are "a/an ..." (not exact), groups of two to four are counted exactly
    ("three circles"), as every sampled spec is; other groups have no canonical form."""
    for group in spec.groups:
        if group.exact != (group.count > 1):
            raise DataError(
                f"group {group} has no canonical caption; accepted: one object not exact, or 2 to 4 objects exact"
            )
    phrases = [noun_phrase(group) for group in spec.groups]
    relation = spec.relation
    if relation is not None:
        if len(spec.groups) != 2:
            raise DataError(f"a spec with a relation has no canonical caption with {len(spec.groups)} groups; accepted: 2")
        return f"{phrases[relation.subject]} {CANONICAL_RELATION_PHRASES[relation.name]} {phrases[relation.reference]}"
    if len(phrases) > 2:
        raise DataError(f"a spec of {len(phrases)} groups has no canonical caption; accepted: 1 or 2 groups")
    return " and ".join(phrases)


_COUNT_WORDS = {"a": 1, "an": 1, "one": 1, "1": 1, "two": 2, "2": 2, "three": 3, "3": 3, "four": 4, "4": 4}
_NOUN = (
    rf"(?:{'|'.join(_COUNT_WORDS)}) (?:(?:{'|'.join(COLORS)}) )?(?:{'|'.join(SHAPES)})s?"
)
_RELATION_WORDS = {phrase: name for name, phrases in RELATION_PHRASES.items() for phrase in phrases}
_CAPTION = re.compile(
    rf"(?P<first>{_NOUN})(?:(?P<joint> and | (?:{'|'.join(sorted(_RELATION_WORDS, key=len, reverse=True))}) )"
    rf"(?P<second>{_NOUN}))?"
)


def normalize_text(text: str) -> str:
    """Lower case, punctuation and quotes as spaces, single spaces: the form captions and answers are compared in."""
    return " ".join(re.sub(r"[.,!?;:\"'()]", " ", text.lower()).split())


def _parse_group(phrase: str) -> ObjectGroup | None:
    words = phrase.split()
    count, noun = _COUNT_WORDS[words[0]], words[-1]
    shape = noun.removesuffix("s")
    if (count > 1) != (shape != noun):  # "two circle", "a circles"
        return None
    color = words[1] if len(words) == 3 else None
    return ObjectGroup(shape, color, count, exact=count > 1)


def parse_caption(text: str) -> Spec | None:
    """The spec a canonical caption means (case, punctuation and numerals aside), or None when `text`
    is not one. The category is the most specific one the groups fit."""
    match = _CAPTION.fullmatch(normalize_text(text))
    if match is None:
        return None
    groups = [_parse_group(match["first"])]
    if match["second"] is not None:
        groups.append(_parse_group(match["second"]))
    if None in groups:
        return None
    joint = (match["joint"] or "").strip()
    if joint and joint != "and":
        if any(group.count > 1 for group in groups):
            return None
        return Spec("position", tuple(groups), Relation(0, _RELATION_WORDS[joint], 1))
    if len(groups) == 2:
        if any(group.count > 1 for group in groups):
            return None
        category = "color_attr" if all(group.color for group in groups) else "two_object"
        return Spec(category, tuple(groups))
    (group,) = groups
    category = "counting" if group.count > 1 else ("colors" if group.color else "single_object")
    return Spec(category, (group,))


def spec_meaning(spec: Spec) -> tuple:
    """What a spec asks for, independent of its category, group order and relation direction:
    two specs with equal meanings are satisfied by the same images."""
    keys = [(g.shape, g.color or "", g.count, g.exact) for g in spec.groups]
    relation = None
    if spec.relation is not None:
        subject, name, reference = spec.relation.subject, spec.relation.name, spec.relation.reference
        if name in ("right of", "below"):  # "A right of B" is "B left of A"
            subject, name, reference = reference, INVERSE_RELATIONS[name], subject
        relation = (keys[subject], name, keys[reference])
    return tuple(sorted(keys)), relation


def caption_shows(described: Spec, asked: Spec) -> bool:
    """Whether a scene that a complete caption describes (`described`: every object in it named with its
    color, as the caption task answers) shows what `asked` asks: each asked group's objects there (by shape,
    and by color where one is asked; a counted group exactly, with no other object of its shape), and the
    asked relation stated by the caption between them. Reasoning on two texts, no picture: the
    self-caption verifier's check (generation.verifiers.SelfCaptionVerifier). A caption states one relation
    per pair, so a diagonal pair captioned on one axis does not show a relation asked on the other; captions
    state relations between single objects only."""
    objects = [(group.shape, group.color) for group in described.groups for _ in range(group.count)]
    chosen = []
    for group in asked.groups:
        found = [i for i, (shape, color) in enumerate(objects) if shape == group.shape and group.color in (None, color)]
        same_shape = sum(1 for shape, _ in objects if shape == group.shape)
        if len(found) < group.count or (group.exact and (len(found), same_shape) != (group.count, group.count)):
            return False
        chosen.append(found[: group.count])
    if asked.relation is None:
        return True
    if described.relation is None or len(objects) != len(described.groups):  # a relation holds between single objects
        return False
    said = described.relation
    stated = {
        (said.subject, said.name, said.reference),
        (said.reference, INVERSE_RELATIONS[said.name], said.subject),
    }
    relation = asked.relation
    return all(
        (subject, relation.name, reference) in stated
        for subject in chosen[relation.subject]
        for reference in chosen[relation.reference]
    )
