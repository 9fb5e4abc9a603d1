"""How a small model reads prompts (text/known_words.py): slips corrected, unknown words left out."""

from __future__ import annotations

import json
import string

import numpy as np
import pytest

from lumina_mgpt.model_folder import EMBEDDED_MODEL
from lumina_mgpt.text.known_words import (
    AMERICAN_SPELLINGS_FILE,
    COMMON_WORDS_FILE,
    MIN_LENGTH,
    PROMPT_WORDS_FILE,
    KnownWords,
    one_edit_apart,
    prompt_words,
)


def _reference_distance(a: str, b: str) -> int:
    """Optimal string alignment distance by dynamic programming (an independent check of one_edit_apart)."""
    d = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) + 1):
        d[i][0] = i
    for j in range(len(b) + 1):
        d[0][j] = j
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[len(a)][len(b)]


def _mutate(rng: np.random.Generator, word: str) -> str:
    """`word` after one or two random edits of any kind."""
    for _ in range(int(rng.integers(1, 3))):
        at = int(rng.integers(len(word) + 1))
        kind = int(rng.integers(4))
        letter = string.ascii_lowercase[int(rng.integers(26))]
        if kind == 0:
            word = word[:at] + letter + word[at:]
        elif kind == 1 and at < len(word):
            word = word[:at] + word[at + 1 :]
        elif kind == 2 and at < len(word):
            word = word[:at] + letter + word[at + 1 :]
        elif at + 1 < len(word):
            word = word[:at] + word[at + 1] + word[at] + word[at + 2 :]
    return word


def test_one_edit_apart_agrees_with_the_edit_distance():
    rng = np.random.default_rng(0)
    words = ["circle", "square", "triangle", "yellow", "above", "disk", "ab", "a"]
    pairs = [(w, _mutate(rng, w)) for w in words for _ in range(300)]
    assert sum(one_edit_apart(a, b) for a, b in pairs) > 500
    for a, b in pairs:
        assert one_edit_apart(a, b) == (_reference_distance(a, b) == 1), (a, b)
        assert one_edit_apart(a, b) == one_edit_apart(b, a)


@pytest.fixture(scope="module")
def words() -> KnownWords:
    known = frozenset({"a", "an", "red", "yellow", "circle", "circles", "square", "triangle", "right", "left", "of",
                       "and", "three", "draw", "disk", "above"})  # fmt: skip
    return KnownWords(known, frozenset({"light", "tree", "disc"}))


def test_slips_one_edit_from_a_known_word_are_corrected_keeping_case(words):
    assert words.read("a triangle and a xircle") == "a triangle and a circle"  # replaced
    assert words.read("a uellow sqaure") == "a yellow square"  # replaced, swapped
    assert words.read("a tringle above a circcle") == "a triangle above a circle"  # dropped, doubled
    assert words.read("DRAW A RED CIRCEL!") == "DRAW A RED CIRCLE!"
    assert words.read("Draw a Yellpw circle.") == "Draw a Yellow circle."


def test_unknown_words_are_left_out_and_common_words_never_taken_for_slips(words):
    assert words.read("i'd like to see a red circle, thanks") == "a red circle,"
    assert words.read("a red circle, thanks!") == "a red circle!"  # no comma left hanging before the mark
    assert words.read("a light red tree") == "a red"  # not "right", not "three": left out
    assert words.read("a disc above 3 squares") == "a above 3 squares"  # a plural of a known word is kept
    assert words.read("two Squares") == "Squares"  # "two" is unknown to this list
    assert words.read("a crcle") == "a circle"
    assert words.read("a circ") == "a"  # two edits: not a slip
    assert words.read("a cde") == "a"  # under MIN_LENGTH letters: never corrected
    assert words.read("xyzzy plugh") == "xyzzy plugh"  # nothing known: as written


def test_british_spellings_are_read_the_american_way_where_the_model_knows_that_word():
    words = KnownWords(frozenset({"a", "disk", "colored", "red", "color", "circle"}), frozenset({"disc", "colour"}),
                       {"disc": "disk", "coloured": "colored", "colour": "color", "grey": "gray"})  # fmt: skip
    assert words.read("a disc coloured red") == "a disk colored red"  # "disc" is common, yet not a slip here
    assert words.read("A DISC in the Colour red") == "A DISK Color red"
    assert words.read("a grey circle") == "a circle"  # "gray" is unknown to this list: left out
    assert words.read("a disc's colour") == "a disk's color"  # a possessive keeps its 's


def test_the_shipped_spelling_map_is_british_to_american_and_loads_with_the_embedded_model():
    words = KnownWords.from_folder(EMBEDDED_MODEL)
    assert len(words.american) > 1500 and AMERICAN_SPELLINGS_FILE.read_text().startswith("#")
    assert all(b.isalpha() and a.isalpha() and b != a and b == b.lower() for b, a in words.american.items())
    assert words.american["colour"] == "color" and words.american["discs"] == "disks"
    assert words.read("a disc coloured orange") == "a disk colored orange"
    assert words.read("a square higher up than a disc in the colour orange") == (
        "a square higher up than a disk in the color orange"
    )


def test_a_word_one_edit_from_two_known_words_is_not_guessed():
    words = KnownWords(frozenset({"a", "cart", "card"}), frozenset())
    assert words.read("a carx") == "a"
    assert words.read("a carts") == "a carts"  # a plural of a known word, not a slip of "cart"


def test_ties_go_to_the_same_first_letter_then_to_the_word_over_its_plural():
    words = KnownWords(frozenset({"a", "yellow", "below", "circle", "circles", "above", "move"}), frozenset())
    assert words.read("a yelow circlee") == "a yellow circle"
    assert words.read("aove a circlse") == "above a circle"


def test_other_scripts_curly_apostrophes_hyphens_and_possessives(words):
    assert words.read("a red café circle") == "a red circle"
    assert words.read("i\u2019d draw a red circle") == "draw a red circle"
    assert words.read("a yellow-coloured circle") == "a yellow circle"
    assert words.read("the circle's red triangle") == "circle's red triangle"  # "the" is unknown to this list


def test_prompt_words_keep_words_common_in_the_texts_and_drop_rare_typos():
    texts = ["a red circle"] * 3000 + ["a blue squrae"] + ["a blue square"] * 10
    assert prompt_words(texts, min_share=1 / 2500) == ["a", "blue", "circle", "red", "square"]


def test_folders_without_a_word_list_read_prompts_as_written(tmp_path):
    assert KnownWords.from_folder(tmp_path) is None
    saved = KnownWords(frozenset({"a", "circle"}), frozenset())
    saved.save(tmp_path)
    loaded = KnownWords.from_folder(tmp_path)
    assert loaded.known == saved.known and (tmp_path / PROMPT_WORDS_FILE).read_text() == "a\ncircle\n"


def test_the_embedded_models_words_and_the_common_words_fit_together():
    words = KnownWords.from_folder(EMBEDDED_MODEL)
    assert words is not None and {"circle", "square", "triangle", "yellow", "above", "left"} <= words.known
    assert words.common and not (words.common & words.known)
    targets = [k for k in words.known if len(k) >= MIN_LENGTH]
    assert all(any(one_edit_apart(c, t) for t in targets) for c in words.common)
    assert {"light", "night", "tree"} & words.common  # would otherwise become "right" and "three"
    assert COMMON_WORDS_FILE.read_text().startswith("#")


@pytest.fixture(scope="module")
def pipe(one_thread):
    from lumina_mgpt.generation.pipeline import Pipeline

    return Pipeline.from_pretrained(pack_weights=False)


def test_the_pipeline_reads_prompts_with_its_words_and_records_what_it_read(pipe):
    assert pipe.read("a triangle and a xircle") == "a triangle and a circle"
    assert pipe.rewrite("an orange dquare") == pipe.rewrite("an orange square")
    slip, right = pipe.generate(["a yellpw circle", "a yellow circle"], seed=[5, 5], progress=False)
    assert np.array_equal(np.asarray(slip), np.asarray(right))
    slip_meta, right_meta = (json.loads(image.info["parameters"]) for image in (slip, right))
    assert slip_meta["prompt"] == "a yellpw circle" and slip_meta["read_as"] == "a yellow circle"
    assert "read_as" not in right_meta


def test_a_rewritten_prompt_keeps_how_the_request_was_read(pipe):
    (image,) = pipe.generate("a yellpw circle, thanks", rewrite=True, progress=False)
    meta = json.loads(image.info["parameters"])
    assert meta["prompt"] == "a yellpw circle, thanks" and meta["rewritten_prompt"] == "a yellow circle"
    assert meta["thinking"] == {"by": "self", "read_as": "a yellow circle,"}


def test_saved_pipelines_keep_their_words_and_a_folder_written_over_loses_another_models(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "copy")
    assert KnownWords.from_folder(tmp_path / "copy").known == pipe.known_words.known
    words, pipe.known_words = pipe.known_words, None
    try:
        pipe.save_pretrained(tmp_path / "copy")
    finally:
        pipe.known_words = words
    assert KnownWords.from_folder(tmp_path / "copy") is None


def test_task_texts_and_subjects_are_read_and_recorded(pipe):
    from PIL import Image

    from lumina_mgpt.generation.tasks import TaskRequest

    image = Image.new("RGB", (64, 64), "white")
    request = pipe.read_request(TaskRequest("subject", "a yellpw square", image, subject="red circel"))
    assert (request.text, request.subject) == ("a yellow square", "red circle")
    (edited,) = pipe.run_image_tasks([TaskRequest("edit", "make the xircle blue", image)], progress=False)
    meta = json.loads(edited.info["parameters"])
    assert meta["instruction"] == "make the xircle blue" and meta["read_as"] == "make the circle blue"


def test_fine_tuned_exports_carry_the_word_list_only_from_named_assets(tmp_path):
    from lumina_mgpt.training.checkpoint import copy_assets

    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "tokenizer.json").write_text("{}")
    (tmp_path / "assets" / PROMPT_WORDS_FILE).write_text("a\n")
    for word_list, folder in ((True, tmp_path / "named"), (False, tmp_path / "default")):
        folder.mkdir()
        copy_assets(tmp_path / "assets", folder, word_list=word_list)
        assert (folder / "tokenizer.json").is_file() and (folder / PROMPT_WORDS_FILE).is_file() == word_list


def test_lumina_generate_says_how_the_model_read_a_prompt(tmp_path, capsys, one_thread):
    from lumina_mgpt.cli import main

    assert main(["generate", "a yellpw circle, thanks", "--out", str(tmp_path)]) == 0
    assert "the model reads 'a yellpw circle, thanks' as 'a yellow circle,'" in capsys.readouterr().err
    (png,) = tmp_path.glob("*.png")
    assert "a yellow circle," in png.read_bytes().decode("latin-1")  # read_as, in the PNG's metadata
