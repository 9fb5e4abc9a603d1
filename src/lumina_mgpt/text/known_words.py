"""How a small model reads a prompt: only the words it was trained on, slips corrected.

A model trained from scratch on a narrow world (the embedded shapes model) has seen a few hundred words.
Any other word reaches it as byte pieces, and pieces mislead: "thanks" starts with the piece " than" of
"higher than", so "i'd like to see a triangle, thanks" was rewritten "a triangle above"; "coloured"
ends in the piece "red". A project folder may therefore list the words its model was trained on
(`prompt_words.txt`, one a line). Then `KnownWords.read` gives the model the prompt with
- each British spelling whose American spelling it knows written the American way ("colour" -> "color",
  "disc" -> "disk"), from the 1,737 pairs of `american_spellings.tsv` (next to this file);
- each slip corrected: a word it does not know, one edit (a letter inserted, dropped or replaced, or two
  neighbours swapped) from a word it knows, becomes that word ("xircle" -> "circle"). Where two known
  words are one edit away, the one that begins with the same letter wins ("yelow": yellow, not below), and
  of a word and its plural, the word ("circlee": circle);
- every other word it does not know left out (a plural or possessive of a known word is kept): a word never
  trained on carries nothing the model can use. That includes words that change the meaning, such as "not"
  and "without", when the model was never trained on them.

Only slips of known words of MIN_LENGTH letters or more are corrected ("redd" is left out, not read "red"),
and never a common English word (`common_words.txt`, next to this file), so that "light" never becomes
"right" nor "tree" "three": an unknown real word means something the model cannot draw (it is left out); a
non-word one edit from a known word is most likely that word mistyped. Digits and punctuation are kept.

`common_words.txt` holds the English words of at least 4 letters with a frequency of one in a million or
more that lie one edit away from a word of the embedded model's list: it protects that list's neighbours
only, so a model trained on other words needs the list made again for its own. It was derived from the wordfreq
package's English frequencies (Robyn Speer, data CC BY-SA 4.0; see docs/THIRD_PARTY.md), with
`python -m lumina_mgpt.text.known_words --write-common-words` where wordfreq is installed.
`american_spellings.tsv` is OpenAI Whisper's British-to-American spelling map (MIT), written by
`--write-american-spellings` from Whisper's `normalizers/english.json`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lumina_mgpt.atomic import write_text_atomically
from lumina_mgpt.errors import DataError

PROMPT_WORDS_FILE = "prompt_words.txt"
COMMON_WORDS_FILE = Path(__file__).with_name("common_words.txt")
AMERICAN_SPELLINGS_FILE = Path(__file__).with_name("american_spellings.tsv")
MIN_LENGTH = 4
MIN_SPELLINGS = 1000  # a spelling map with fewer pairs is not Whisper's
WORD = re.compile(r"[^\W\d_]+(?:['\u2019][^\W\d_]+)*")  # letters of any script; "i'd" is one word
POSSESSIVE = re.compile(r"['\u2019]s$")
STRAY_HYPHEN = re.compile(r"(?<![^\W\d_])-|-(?![^\W\d_])")  # left by a word left out: "orange-"
COMMA_BEFORE_MARK = re.compile(r",\s*([.!?])")  # "are there, ?" (", thanks" left out) -> "are there?"


def one_edit_apart(a: str, b: str) -> bool:
    """Whether one insertion, deletion, substitution or swap of two neighbouring letters turns `a` into `b`."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diffs = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
        if len(diffs) != 2 or diffs[1] != diffs[0] + 1:
            return len(diffs) == 1  # one letter replaced
        i, j = diffs
        return a[i] == b[j] and a[j] == b[i]  # two neighbours swapped
    short, long = (a, b) if len(a) < len(b) else (b, a)
    first = next((i for i, (x, y) in enumerate(zip(short, long)) if x != y), len(short))
    return short[first:] == long[first + 1 :]


def _read_words(path: Path) -> frozenset[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return frozenset(line.strip().lower() for line in lines if line.strip() and not line.startswith("#"))


def _read_spellings(path: Path) -> dict[str, str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return dict(line.split("\t") for line in lines if line and not line.startswith("#"))


def _same_case(word: str, like: str) -> str:
    if like.isupper() and len(like) > 1:
        return word.upper()
    return word.capitalize() if like[:1].isupper() else word


@dataclass(frozen=True)
class KnownWords:
    """The words a model knows (`known`), the common English words never taken for slips (`common`), and
    the American spelling of British ones (`american`)."""

    known: frozenset[str]
    common: frozenset[str]
    american: Mapping[str, str] = field(default_factory=dict, hash=False)

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> KnownWords | None:
        """The known words of a model folder that lists them (PROMPT_WORDS_FILE), else None."""
        path = Path(folder) / PROMPT_WORDS_FILE
        if not path.is_file():
            return None
        return cls(_read_words(path), _read_words(COMMON_WORDS_FILE), _read_spellings(AMERICAN_SPELLINGS_FILE))

    def save(self, folder: str | os.PathLike) -> Path:
        return write_prompt_words(folder, self.known)

    def fingerprint(self) -> str:
        """The sha256 of the known words: which reading a data set's prompts went through."""
        return hashlib.sha256("\n".join(sorted(self.known)).encode()).hexdigest()

    def knows(self, word: str) -> bool:
        """Whether `word` (lower case) is a known word, or the plural or possessive of one."""
        word = POSSESSIVE.sub("", word)
        if word in self.known:
            return True
        return word.endswith("s") and (word[:-1] in self.known or (word.endswith("es") and word[:-2] in self.known))

    def correction(self, word: str) -> str | None:
        """The known word `word` (lower case, not known) was most likely meant to be, or None."""
        if len(word) < MIN_LENGTH or word in self.common:
            return None
        candidates = sorted(k for k in self.known if len(k) >= MIN_LENGTH and one_edit_apart(word, k))
        if len(candidates) > 1:  # first letters are seldom mistyped
            candidates = [k for k in candidates if k[0] == word[0]] or candidates
        if len(candidates) > 1 and all(k.startswith(candidates[0]) and k[len(candidates[0]) :] in ("s", "es")
                                       for k in candidates[1:]):  # fmt: skip
            candidates = candidates[:1]  # a word and its plural: the word
        return candidates[0] if len(candidates) == 1 else None

    def _word_as_read(self, word: str) -> str:
        lower = word.lower()
        if self.knows(lower):
            return word
        possessive = POSSESSIVE.search(word)
        stem = word[: possessive.start()] if possessive else word
        american = self.american.get(stem.lower())
        if american is not None and self.knows(american):
            return _same_case(american, stem) + (possessive.group() if possessive else "")
        replacement = self.correction(lower)
        return "" if replacement is None else _same_case(replacement, word)

    def read(self, text: str) -> str:
        """`text` as the model reads it: known words as written, British spellings made American, slips
        corrected, other words left out (then spaces tidied). A text with every word known, or with none, is
        returned as written."""
        changed = WORD.sub(lambda m: self._word_as_read(m.group()), text)
        if changed == text:
            return text
        read = " ".join(STRAY_HYPHEN.sub(" ", changed).split())
        read = COMMA_BEFORE_MARK.sub(r"\1", read)
        return read if WORD.search(read) else text


def prompt_words(texts: Iterable[str], min_share: float = 1 / 4500) -> list[str]:
    """The words (lower case) of training texts that appear in at least `min_share` of them: the model's
    vocabulary, without the training data's own random typos, each of which is rare. In the embedded model's
    808,000 texts the most frequent typo ("daw") is in 156 and the rarest word of a template ("bottom") in
    219; the default threshold is 180."""
    counts: Counter[str] = Counter()
    total = 0
    for text in texts:
        counts.update(set(WORD.findall(text.lower())))
        total += 1
    return sorted(word for word, count in counts.items() if count >= min_share * total)


def write_prompt_words(folder: str | os.PathLike, words: Iterable[str]) -> Path:
    return write_text_atomically(Path(folder) / PROMPT_WORDS_FILE, "".join(f"{w}\n" for w in sorted(words)))


def write_common_words(prompt_words_file: Path, min_zipf: float = 3.0) -> None:
    """Rewrite COMMON_WORDS_FILE from wordfreq (a development tool: the package does not depend on it)."""
    from wordfreq import top_n_list, zipf_frequency

    known = _read_words(prompt_words_file)
    targets = [k for k in known if len(k) >= MIN_LENGTH]
    common = sorted(
        word for word in top_n_list("en", 200_000)
        if word.isalpha() and word.isascii() and len(word) >= MIN_LENGTH and word not in known
        and zipf_frequency(word, "en") >= min_zipf and any(one_edit_apart(word, t) for t in targets)
    )  # fmt: skip
    header = (
        "# English words one edit from a word the embedded shapes model knows, that slip correction leaves\n"
        f"# alone: wordfreq English, Zipf frequency >= {min_zipf} (data CC BY-SA 4.0, Robyn Speer; see\n"
        "# docs/THIRD_PARTY.md). Written by `python -m lumina_mgpt.text.known_words --write-common-words`.\n"
    )
    write_text_atomically(COMMON_WORDS_FILE, header + "".join(f"{w}\n" for w in common))


def write_american_spellings(whisper_english_json: Path) -> None:
    """Rewrite AMERICAN_SPELLINGS_FILE from OpenAI Whisper's `whisper/normalizers/english.json`, keeping the
    pairs of two single words (it has two others: "flyer / flier" and a stray "</span>")."""
    try:
        pairs = json.loads(whisper_english_json.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read {whisper_english_json} as JSON: {error}") from error
    if not isinstance(pairs, dict) or not all(isinstance(v, str) for v in pairs.values()):
        raise DataError(f"{whisper_english_json} is not a JSON object of spellings (British word -> American word)")
    spellings = {british: american for british, american in pairs.items() if british.isalpha() and american.isalpha()}
    if len(spellings) < MIN_SPELLINGS:
        raise DataError(
            f"{whisper_english_json} holds {len(spellings)} pairs of single words; Whisper's english.json holds "
            f"about 1,700: is it the right file?"
        )
    header = (
        "# British spelling<TAB>American spelling: OpenAI Whisper's whisper/normalizers/english.json (MIT,\n"
        "# Copyright (c) 2022 OpenAI; see docs/THIRD_PARTY.md). Written by\n"
        "# `python -m lumina_mgpt.text.known_words --write-american-spellings ENGLISH_JSON`.\n"
    )
    rows = "".join(f"{british}\t{american}\n" for british, american in sorted(spellings.items()))
    write_text_atomically(AMERICAN_SPELLINGS_FILE, header + rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate the word lists of prompt reading.")
    parser.add_argument(
        "--write-common-words",
        type=Path,
        metavar="PROMPT_WORDS_TXT",
        help="from a model folder's prompt_words.txt; needs `pip install wordfreq`",
    )
    parser.add_argument(
        "--write-american-spellings",
        type=Path,
        metavar="ENGLISH_JSON",
        help="from whisper/normalizers/english.json of the openai-whisper source package",
    )
    args = parser.parse_args(argv)
    if args.write_common_words is None and args.write_american_spellings is None:
        parser.error("give --write-common-words, --write-american-spellings or both")
    if args.write_common_words is not None:
        write_common_words(args.write_common_words)
    try:
        if args.write_american_spellings is not None:
            write_american_spellings(args.write_american_spellings)
    except DataError as error:
        parser.error(str(error))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
