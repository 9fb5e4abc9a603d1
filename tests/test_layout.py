"""Vocabulary layouts: ids resolved by name and checked against docs/FORMATS.md, maps, serialization."""

import argparse
import json
import pickle

import numpy as np
import pytest

from lumina_mgpt.errors import FormatError
from lumina_mgpt.formats import VocabLayout, check_image_size, cli, get_layout
from vocab_fixtures import chameleon_like_tokenizer, v1_tokenizer, v2_tokenizer


class EditedTokenizer:
    """A fixture tokenizer with some tokens removed or moved, to exercise the checks."""

    def __init__(self, base, missing=(), moved=None):
        self.base, self.missing, self.moved = base, set(missing), moved or {}
        self.vocab_size, self.bos_id = base.vocab_size, base.bos_id

    def token_to_id(self, token):
        if token in self.missing:
            return None
        return self.moved.get(token, self.base.token_to_id(token))


def test_v1_layout_has_the_formats_md_ids_and_reads_codes_from_names():
    layout = get_layout("lumina-mgpt", v1_tokenizer())
    assert (layout.vocab_size, layout.bos_id, layout.pad_id) == (65_536, 0, 1)
    assert (layout.start_image_id, layout.end_image_id, layout.end_line_id, layout.separator_id) == (8197, 8196, 8803, 8710)
    assert layout.size_indicator_ids[:3] == (8804, 8805, 8806) and layout.max_indicator == 128
    assert (layout.codebook_size, layout.downsample, layout.latent_cells_per_indicator) == (8192, 16, 2)
    # The fixture sorts the IMGIMG names, so code c is not at c + 4: IMGIMGBZ (1) follows the 1110 names IMGIMGB?..Z.
    assert layout.code_ids[:3] == (4, 1115, 2226)
    assert sorted(layout.code_ids) == list(range(4, 8196))
    codes = np.arange(8192).reshape(64, 128)
    assert np.array_equal(layout.ids_to_codes(layout.codes_to_ids(codes)), codes)
    assert layout.ids_to_codes(np.array([8196, 8197, 0, 70_000, -1])).tolist() == [-1] * 5
    mask = layout.image_code_mask()
    assert mask.shape == (65_536,) and mask.sum() == 8192 and mask[4:8196].all()
    assert layout.size_indicator_value(8812) == 8 and layout.size_indicator_value(8803) is None


def test_v2_layout_resolves_separator_and_indicators_by_name():
    layout = get_layout("lumina-mgpt-2", v2_tokenizer())
    assert (layout.vocab_size, layout.bos_id, layout.pad_id) == (171_385, 151_643, 151_643)
    assert (layout.start_image_id, layout.end_image_id, layout.end_line_id) == (151_665, 151_666, 151_670)
    assert layout.separator_id == 151_667 and layout.size_indicator_ids[:2] == (151_671, 151_672)
    assert (layout.codebook_size, layout.downsample, layout.latent_cells_per_indicator) == (16_384, 8, 4)
    assert layout.codes_to_ids(np.array([0, 16_383])).tolist() == [155_000, 171_383]
    assert layout.image_code_mask()[155_000:171_384].all() and layout.image_code_mask().sum() == 16_384


def test_compact_layout_puts_codes_then_specials_after_the_text():
    layout = get_layout("compact", text_vocab_size=1000, codebook_size=64, downsample=8, max_indicator=16)
    assert layout.code_ids == tuple(range(1000, 1064))
    assert (layout.separator_id, layout.start_image_id, layout.end_image_id, layout.end_line_id, layout.pad_id) == (
        1064, 1065, 1066, 1067, 1068,
    )
    assert layout.size_indicator_ids == tuple(range(1069, 1086)) and layout.vocab_size == 1086
    assert layout.bos_id is None and layout.latent_cells_per_indicator == 4
    assert get_layout("compact", v1_tokenizer()).bos_id == 0


def test_layouts_serialize_and_fingerprint_stably():
    v1 = get_layout("lumina-mgpt", v1_tokenizer())
    compact = get_layout("compact", text_vocab_size=1000)
    for layout in (v1, compact):
        data = json.loads(json.dumps(layout.to_dict()))
        again = VocabLayout.from_dict(data)
        assert again == layout and again.fingerprint() == layout.fingerprint()
        unpickled = pickle.loads(pickle.dumps(layout))  # data-loader workers receive layouts pickled
        assert unpickled == layout and np.array_equal(unpickled.image_code_mask(), layout.image_code_mask())
    assert v1.fingerprint() != compact.fingerprint()
    assert compact.fingerprint() != get_layout("compact", text_vocab_size=1001).fingerprint()
    with pytest.raises(FormatError, match=r"missing \['pad_id'\], unknown \['extra'\]"):
        VocabLayout.from_dict({**{k: v for k, v in compact.to_dict().items() if k != "pad_id"}, "extra": 1})


def test_unknown_layout_lists_the_accepted_names():
    with pytest.raises(FormatError, match="unknown layout 'chameleon'; accepted: lumina-mgpt, lumina-mgpt-2, compact"):
        get_layout("chameleon")
    with pytest.raises(FormatError, match=r"unknown option\(s\) \['codebook'\] for layout 'compact'"):
        get_layout("compact", text_vocab_size=10, codebook=3)


def test_official_layouts_need_their_tokenizer():
    with pytest.raises(FormatError, match="'lumina-mgpt' needs its text tokenizer .* IMGIMG"):
        get_layout("lumina-mgpt")
    with pytest.raises(FormatError, match="'lumina-mgpt-2' needs its text tokenizer"):
        get_layout("lumina-mgpt-2")
    with pytest.raises(FormatError, match="needs a tokenizer or the option text_vocab_size"):
        get_layout("compact")


def test_tokenizer_missing_or_moving_a_special_token_is_refused():
    with pytest.raises(FormatError, match="no token '<racm3:break>', which layout 'lumina-mgpt' requires"):
        get_layout("lumina-mgpt", EditedTokenizer(v1_tokenizer(), missing=["<racm3:break>"]))
    with pytest.raises(FormatError, match="maps '<reserved08706>' to id 9000, but layout 'lumina-mgpt' expects id 8710"):
        get_layout("lumina-mgpt", EditedTokenizer(v1_tokenizer(), moved={"<reserved08706>": 9000}))
    with pytest.raises(FormatError, match="no token 'IMGIMGBAZ'"):
        get_layout("lumina-mgpt", EditedTokenizer(v1_tokenizer(), missing=["IMGIMGBAZ"]))
    with pytest.raises(FormatError, match="no token '<reserved08706>', which layout 'lumina-mgpt-2' requires"):
        get_layout("lumina-mgpt-2", EditedTokenizer(v2_tokenizer(), missing=["<reserved08706>"]))
    with pytest.raises(FormatError, match="lacks the size-indicator tokens <reserved08800>"):
        get_layout("lumina-mgpt-2", EditedTokenizer(v2_tokenizer(), missing=["<reserved08801>"]))


def test_fewer_indicators_limit_the_accepted_sizes():
    layout = get_layout("lumina-mgpt-2", EditedTokenizer(v2_tokenizer(), missing=["<reserved08817>"]))
    assert layout.max_indicator == 16
    check_image_size(512, 512, layout)
    with pytest.raises(FormatError, match="longest side must be at most 512"):
        check_image_size(544, 512, layout)


def test_tokenize_verb_prints_prompt_and_image_lengths(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    # An official v1 folder with its text tokenizer and no image tokenizer: ids need none.
    chameleon_like_tokenizer(tmp_path)
    (tmp_path / "config.json").write_text('{"vocab_size": 65536}')
    args = parser.parse_args(["a red cube", "--width", "512", "--height", "256", "--model", str(tmp_path), "--ids"])
    assert cli.run(args) == 0
    question_ids = v1_tokenizer().encode("Generate an image of 512x256 according to the following prompt:\na red cube")
    prompt = [0] + question_ids + [8710]
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("layout: lumina-mgpt (vocab 65536,")
    assert lines[2:] == [
        f"prompt: {len(prompt)} ids",
        "image: 512x256 -> grid 16x32 (rows x cols), block 532 ids",
        f"total: {len(prompt) + 532} ids",
        "ids: " + " ".join(map(str, prompt)),
    ]
