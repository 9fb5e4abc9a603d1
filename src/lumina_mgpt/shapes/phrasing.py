"""The ways people write a shapes request, for training: from a spec, a prompt in one of many styles.

Styles mix freely: the canonical captions of `captions.describe`; framing and filler ("please draw",
"i want a picture with"); numerals or number words; colors before or after the noun ("a circle in
blue", "a blue-colored circle", "a circle that is blue"); relation synonyms and reference-first
sentences ("to the right of a blue circle, there is a triangle", "above the square is a red
circle"); object synonyms; case, punctuation and spacing; light typos. Edit instructions get the same
treatment (`edit_instruction`). Everything is drawn from the rng given, so a seed fixes the text.

Evaluation phrasings live apart, in heldout_phrasing.py, and use words and templates never drawn here.
"""

from __future__ import annotations

import numpy as np

from lumina_mgpt.errors import DataError
from lumina_mgpt.shapes.captions import NUMBER_WORDS, describe
from lumina_mgpt.shapes.dual_panel import PHRASINGS, Edit
from lumina_mgpt.shapes.spec import COLORS, ObjectGroup, Spec

CANONICAL_SHARE = 0.25  # prompts left exactly as `describe` writes them
TYPO_SHARE = 0.1
# (singular, plural) nouns per shape; the first is the shape's own name and is drawn most often.
SHAPE_NOUNS: dict[str, tuple[tuple[str, str], ...]] = {
    "circle": (("circle", "circles"), ("disk", "disks"), ("round shape", "round shapes"), ("dot", "dots")),
    "square": (("square", "squares"), ("box", "boxes"), ("square shape", "square shapes")),
    "triangle": (("triangle", "triangles"), ("triangle shape", "triangle shapes")),
}
OWN_NOUN_SHARE = 0.7
# How a color attaches to a noun phrase: {count} is "a", "two", "3", ...; {noun} agrees with it.
COLOR_STYLES = (
    "{count} {color} {noun}",
    "{count} {color} {noun}",
    "{count} {color}-colored {noun}",
    "{count} {color} colored {noun}",
    "{count} {noun} in {color}",
    "{count} {noun} colored {color}",
    "{count} {noun} that {be} {color}",
    "{count} {noun} which {be} {color}",
)
SUBJECT_FIRST_RELATIONS: dict[str, tuple[str, ...]] = {
    "left of": ("to the left of", "left of", "on the left of", "on the left side of", "to the left side of"),
    "right of": ("to the right of", "right of", "on the right of", "on the right side of", "to the right side of"),
    "above": ("above", "over", "on top of", "higher than", "up above"),
    "below": ("below", "beneath", "under", "underneath", "lower than", "down below"),
}
# Reference-first openers: "{opener} {reference}, there is {subject}".
REFERENCE_FIRST_RELATIONS: dict[str, tuple[str, ...]] = {
    "left of": ("to the left of", "left of", "on the left of", "on the left side of"),
    "right of": ("to the right of", "right of", "on the right of", "on the right side of"),
    "above": ("above", "over", "on top of"),
    "below": ("below", "beneath", "under", "underneath"),
}
SIDE_WORDS = {"left of": "left", "right of": "right"}
SUBJECT_FIRST_TEMPLATES = (
    "{subject} {relation} {reference}",
    "{subject} {be} {relation} {reference}",
    "{subject} placed {relation} {reference}",
    "{subject} positioned {relation} {reference}",
    "{subject} sitting {relation} {reference}",
)
REFERENCE_FIRST_TEMPLATES = (
    "{relation} {reference}, there {be} {subject}",
    "{relation} {reference} there {be} {subject}",
    "{relation} {the_reference} {be} {subject}",
    "{relation} {reference}: {subject}",
)
SIDE_TEMPLATE = "{subject} beside {reference} on the {side}"
PAIR_TEMPLATES = (
    "{first} and {second}",
    "{first} with {second}",
    "{first}, {second}",
    "{first} plus {second}",
    "{first} as well as {second}",
    "both {first} and {second}",
    "{first} along with {second}",
)
FRAMES = (
    "{text}",
    "{text}",
    "please draw {text}",
    "draw {text}",
    "can you make {text}",
    "can you draw {text}",
    "make {text}",
    "create {text}",
    "generate {text}",
    "show {text}",
    "show me {text}",
    "i want a picture with {text}",
    "i want an image of {text}",
    "a picture of {text}",
    "an image showing {text}",
    "an image of {text}",
    "a drawing of {text}",
    "picture: {text}",
)
ENDINGS = ("", "", "", ".", ".", "!", " please", ", please")
# People wrap requests in words that say nothing about the scene ("ok so", "for my slides"), and a model
# meets words it never saw. Some prompts get such words before or after them: common ones, and made-up
# ones of random letters, so that the model learns that unknown words name no object. None is a word of the
# evaluation-only styles (heldout_phrasing.py): tests/test_shapes_phrasing.py checks it.
DISTRACTOR_SHARE = 0.15
NEUTRAL_WORDS = (
    "ok", "okay", "so", "well", "hey", "hi", "hello", "um", "hmm", "just", "quickly", "kindly", "simply",
    "cheers", "today", "now", "again", "maybe", "anyway", "basically", "nice", "cool",
    "for my slides", "for a poster", "for my notes", "for the report", "if you can", "when you have time",
    "as agreed", "real quick", "no rush", "asap", "sketch", "idea", "test", "draft",
)  # fmt: skip
# Made-up words must not hide a word that means something in a prompt.
CONTENT_WORDS = (
    *COLORS, *(noun for nouns in SHAPE_NOUNS.values() for pair in nouns for noun in pair), *NUMBER_WORDS.values(),
    "left", "right", "above", "below", "over", "under", "top", "side", "and", "with", "one", "two", "ten",
)  # fmt: skip


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _count_word(rng: np.random.Generator, group: ObjectGroup) -> str:
    """'a' (fixed later to 'an' where needed), 'one', '1', 'a single' for one; 'three', '3' or
    'exactly three' for counted groups."""
    if group.count == 1:
        return _pick(rng, ("a", "a", "a", "one", "1", "a single"))
    number = _pick(rng, (NUMBER_WORDS[group.count], str(group.count)))
    return f"exactly {number}" if group.exact and rng.random() < 0.2 else number


def _noun(rng: np.random.Generator, group: ObjectGroup) -> str:
    """The group's shape named by its own noun mostly, else a synonym, agreeing with its count."""
    nouns = SHAPE_NOUNS[group.shape]
    singular, plural = nouns[0] if rng.random() < OWN_NOUN_SHARE else nouns[int(rng.integers(1, len(nouns)))]
    return singular if group.count == 1 else plural


def varied_noun_phrase(rng: np.random.Generator, group: ObjectGroup, definite: bool = False) -> str:
    """One way to name `group`: a count word, the noun (a synonym at times), the color before or after it.
    `definite` names it with "the" ("the red circle", "the three squares")."""
    noun = _noun(rng, group)
    count = _count_word(rng, group)
    if definite:
        count = "the" if group.count == 1 else f"the {NUMBER_WORDS[group.count]}"
    if group.color is None:
        phrase = f"{count} {noun}"
    else:
        be = "is" if group.count == 1 else "are"
        phrase = _pick(rng, COLOR_STYLES).format(count=count, color=group.color, noun=noun, be=be)
    if phrase.startswith("a "):
        phrase = f"{_article(phrase[2:])} {phrase[2:]}"
    return phrase


def _relation_sentence(rng: np.random.Generator, spec: Spec) -> tuple[str, bool]:
    """The sentence, and whether it stands alone (names the reference first, or has its own verb),
    so that it takes no framing such as "please draw"."""
    relation = spec.relation
    if relation is None:
        raise DataError("a position spec needs a relation")
    subject_group, reference_group = spec.groups[relation.subject], spec.groups[relation.reference]
    subject, reference = varied_noun_phrase(rng, subject_group), varied_noun_phrase(rng, reference_group)
    be = "is" if subject_group.count == 1 else "are"
    style = rng.random()
    if style < 0.3:
        opener = _pick(rng, REFERENCE_FIRST_RELATIONS[relation.name])
        sentence = _pick(rng, REFERENCE_FIRST_TEMPLATES).format(
            relation=opener,
            reference=reference,
            the_reference=varied_noun_phrase(rng, reference_group, definite=True),
            subject=subject,
            be=be,
        )
        return sentence, True
    if style < 0.38 and relation.name in SIDE_WORDS:
        return SIDE_TEMPLATE.format(subject=subject, reference=reference, side=SIDE_WORDS[relation.name]), False
    templates = SUBJECT_FIRST_TEMPLATES
    if " that " in subject or " which " in subject:  # "a circle that is red is above ..." reads wrong
        templates = tuple(t for t in templates if "{be}" not in t)
    template = _pick(rng, templates)
    phrase = _pick(rng, SUBJECT_FIRST_RELATIONS[relation.name])
    # "a circle is above a square" is a sentence: "draw a circle is above ..." would read wrong.
    return template.format(subject=subject, relation=phrase, reference=reference, be=be), "{be}" in template


def _content(rng: np.random.Generator, spec: Spec) -> tuple[str, bool]:
    """The description, and whether it is a sentence of its own that takes no framing."""
    if spec.relation is not None:
        return _relation_sentence(rng, spec)
    phrases = [varied_noun_phrase(rng, group) for group in spec.groups]
    if len(phrases) == 1:
        return phrases[0], False
    if len(phrases) == 2:
        return _pick(rng, PAIR_TEMPLATES).format(first=phrases[0], second=phrases[1]), False
    return ", ".join(phrases[:-1]) + " and " + phrases[-1], False


def _ending(rng: np.random.Generator, text: str, endings: tuple[str, ...]) -> str:
    """A question mark after "can you ..." mostly; never a second "please"."""
    if text.startswith("can you") and rng.random() < 0.7:
        return "?"
    if text.startswith("please"):
        endings = tuple(e for e in endings if "please" not in e)
    return _pick(rng, endings)


def apply_case(rng: np.random.Generator, text: str) -> str:
    """Lower case mostly; sometimes sentence case, Title Case or UPPER CASE."""
    draw = rng.random()
    if draw < 0.6:
        return text
    if draw < 0.8:
        return text[:1].upper() + text[1:]
    if draw < 0.9:
        return " ".join(word[:1].upper() + word[1:] for word in text.split(" "))
    return text.upper()


def add_typo(rng: np.random.Generator, text: str) -> str:
    """One slip in a word of four letters or more: two letters swapped, one dropped or one doubled."""
    words = text.split(" ")
    candidates = [i for i, word in enumerate(words) if len(word) >= 4 and word.isalpha()]
    if not candidates:
        return text
    index = candidates[int(rng.integers(len(candidates)))]
    word = words[index]
    at = int(rng.integers(1, len(word) - 1))
    kind = int(rng.integers(3))
    if kind == 0:
        word = word[:at] + word[at + 1] + word[at] + word[at + 2 :]
    elif kind == 1:
        word = word[:at] + word[at + 1 :]
    else:
        word = word[:at] + word[at] + word[at:]
    words[index] = word
    return " ".join(words)


def _finish(rng: np.random.Generator, text: str, typos: bool = True) -> str:
    """Spacing, case and (unless `typos` is False) typos, shared by prompts and instructions."""
    if typos and rng.random() < TYPO_SHARE:
        text = add_typo(rng, text)
    if rng.random() < 0.05:
        text = text.replace(" ", "  ", 1)
    if rng.random() < 0.05:
        text = f" {text} "
    return apply_case(rng, text)


def distractor(rng: np.random.Generator) -> str:
    """Words that name nothing in the scene: a common filler, or a made-up word of 3-9 random letters."""
    if rng.random() < 0.5:
        return _pick(rng, NEUTRAL_WORDS)
    while True:
        word = "".join(chr(ord("a") + int(letter)) for letter in rng.integers(26, size=int(rng.integers(3, 10))))
        if not any(content in word for content in CONTENT_WORDS):
            return word


def add_distractors(rng: np.random.Generator, text: str) -> str:
    """`text` with a distractor before it, after it, or both."""
    where = int(rng.integers(3))
    before = f"{distractor(rng)} " if where != 1 else ""
    after = f" {distractor(rng)}" if where != 0 else ""
    return before + text + after


def phrase(spec: Spec, rng: np.random.Generator) -> str:
    """A training prompt for `spec` in a random style."""
    if rng.random() < CANONICAL_SHARE:
        return apply_case(rng, describe(spec, rng))
    content, standalone = _content(rng, spec)
    text = content if standalone else _pick(rng, FRAMES).format(text=content)
    text += _ending(rng, text, ENDINGS)
    if rng.random() < DISTRACTOR_SHARE:
        text = add_distractors(rng, text)
    return _finish(rng, text)


# --- requests jotted as lists or set in context (the requests stage) -------------------------------
# Written after the phrase() styles had trained the first stages (whose records stay as they were): people
# also jot a request down as a list ("shapes: 2 red circles / 1 box") and wrap it in words about the
# background, the style or the purpose ("for a logo: ..., centered on a white background"). None of these
# templates is a held-out one (heldout_phrasing.py); tests/test_shapes_phrasing.py checks it.
LIST_SHARE = 0.3
CONTEXT_SHARE = 0.35
LIST_HEADERS = ("", "", "", "shapes: ", "items: ", "contents: ", "draw: ", "needed: ", "elements: ", "list: ",
                "to draw: ", "shapes wanted: ", "parts: ")  # fmt: skip
LIST_SEPARATORS = ("; ", " / ", " | ", ", ", " + ", " & ", " - ", " ; ", ", plus ")
LIST_RELATION_HEADERS = ("", "", "position: ", "arrangement: ", "placement: ", "where: ", "positions: ")
# {n}: the count as a numeral or a word (a numeral beside "x"), {name}: the shape named with its color (plural
# where n > 1).
LIST_ITEMS = ("{n} {name}", "{n} {name}", "{name} x{n}", "{n}x {name}", "{name} ({n})", "{name}: {n}")
CONTEXT_OPENERS = (
    "on a white background,", "on a plain background:", "simple flat shapes:", "for a logo:", "for a kids' book,",
    "here is my idea:", "my idea:", "concept:", "the design:", "keep it simple:", "minimal style:",
    "i need an illustration with", "i'm thinking of", "what i have in mind is", "the image i want shows",
    "a minimal poster with", "a clean flat graphic of", "an icon showing", "a simple diagram with",
    "on an empty canvas,", "in a cartoon style,", "for the cover page:", "use flat colors.",
)  # fmt: skip
CONTEXT_CLOSERS = (
    ", on a white background", " on a plain background", ", nothing more", ", no other shapes",
    " and no other shapes", ", centered", " in a flat style", ", flat colors", " with a blank background",
    ", keep the background empty", ". the background is white", ". keep it minimal", ", simple and clean",
    " for my presentation", ", in the middle of the frame", ". that's all", ", only these", " on an empty canvas",
    ", drawn simply", ". no text", ", with a gray backdrop", ". make it look clean",
)  # fmt: skip


def _list_item(rng: np.random.Generator, group: ObjectGroup) -> str:
    noun = _noun(rng, group)
    name = noun if group.color is None else _pick(rng, (f"{group.color} {noun}",) * 3 + (f"{noun} in {group.color}",))
    if group.count == 1 and rng.random() < 0.4:
        return f"{_article(name)} {name}"
    template = _pick(rng, LIST_ITEMS)
    number = str(group.count) if "x" in template else _pick(rng, (NUMBER_WORDS[group.count], str(group.count)))
    return template.format(n=number, name=name)


def listed(spec: Spec, rng: np.random.Generator) -> str:
    """'shapes: 2 red circles / 1 square', and for a relation '; position: red circle left of square'."""
    separator = _pick(rng, LIST_SEPARATORS)
    text = _pick(rng, LIST_HEADERS) + separator.join(_list_item(rng, group) for group in spec.groups)
    relation = spec.relation
    if relation is not None:
        subject = varied_noun_phrase(rng, spec.groups[relation.subject])
        reference = varied_noun_phrase(rng, spec.groups[relation.reference])
        if rng.random() < 0.5:  # "red circle left of square": the names without their articles
            subject, reference = (name.split(" ", 1)[1] if name.startswith(("a ", "an ")) else name
                                  for name in (subject, reference))  # fmt: skip
        where = f"{subject} {_pick(rng, SUBJECT_FIRST_RELATIONS[relation.name])} {reference}"
        text += _pick(rng, ("; ", ". ", ", ", separator)) + _pick(rng, LIST_RELATION_HEADERS) + where
    return text


def in_context(spec: Spec, rng: np.random.Generator) -> str:
    """The request between words about its background, style or purpose: an opener, a closer or both."""
    content, standalone = _content(rng, spec)
    if not standalone and rng.random() < 0.5:
        content = _pick(rng, FRAMES).format(text=content)
    where = int(rng.integers(3))
    opener = f"{_pick(rng, CONTEXT_OPENERS)} " if where != 1 else ""
    closer = _pick(rng, CONTEXT_CLOSERS) if where != 0 else ""
    return opener + content + closer


def written_request(spec: Spec, rng: np.random.Generator) -> str:
    """A request for `spec` in any training style: a list, a request in context, or one of `phrase`'s."""
    draw = rng.random()
    if draw < LIST_SHARE:
        return _finish(rng, listed(spec, rng))
    if draw < LIST_SHARE + CONTEXT_SHARE:
        text = in_context(spec, rng)
        if rng.random() < DISTRACTOR_SHARE:
            text = add_distractors(rng, text)
        return _finish(rng, text)
    return phrase(spec, rng)


# --- edit instructions ---------------------------------------------------------------------------
EDIT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "recolor": (
        "change the color of {target} to {color}",
        "make {target} {color}",
        "paint {target} {color}",
        "recolor {target} to {color}",
        "turn {target} {color}",
        "color {target} {color}",
        "{target} should be {color}",
        "change {target} to {color}",
        "give {target} a {color} color",
    ),
    "move": (
        "move {target} {direction}",
        "shift {target} {direction}",
        "push {target} {direction}",
        "slide {target} {direction}",
        "move {target} to the {side}",
        "put {target} further {direction}",
        "drag {target} {direction}",
    ),
    "add": (
        "add {object}",
        "put {object} into the picture",
        "insert {object}",
        "add {object} somewhere",
        "place {object} in the image",
        "include {object}",
        "draw {object} too",
        "also add {object}",
        "put in {object}",
    ),
    "remove": (
        "remove {target}",
        "delete {target}",
        "take away {target}",
        "get rid of {target}",
        "erase {target}",
        "take out {target}",
        "remove {target} from the picture",
        "drop {target}",
    ),
}
DIRECTION_WORDS = {
    "left": ("left", "to the left", "leftwards"),
    "right": ("right", "to the right", "rightwards"),
    "up": ("up", "upwards", "higher"),
    "down": ("down", "downwards", "lower"),
}
SIDE_NAMES = {"left": "left", "right": "right", "up": "top", "down": "bottom"}
EDIT_ENDINGS = ("", "", "", ".", "!", " please", ", please")
EDIT_FRAMES = ("{text}", "{text}", "{text}", "please {text}", "can you {text}", "now {text}")


def edit_instruction(edit: Edit, rng: np.random.Generator, typos: bool = True) -> str:
    """An instruction that asks for `edit` (dual_panel's own phrasings among the styles); `typos`
    False keeps every word as written (evaluation measures editing, not spelling)."""
    if rng.random() < CANONICAL_SHARE:
        return apply_case(rng, edit.instruction(rng, PHRASINGS[edit.kind]))
    target = edit.target
    group = ObjectGroup(target.shape, target.color)
    words = {
        "target": varied_noun_phrase(rng, group, definite=True),
        "object": varied_noun_phrase(rng, group) if edit.kind == "add" else "",
        "color": edit.new_color or "",
        "direction": _pick(rng, DIRECTION_WORDS[edit.direction]) if edit.direction else "",
        "side": SIDE_NAMES[edit.direction] if edit.direction else "",
    }
    text = _pick(rng, EDIT_FRAMES).format(text=_pick(rng, EDIT_TEMPLATES[edit.kind]).format(**words))
    return _finish(rng, text + _ending(rng, text, EDIT_ENDINGS), typos)
