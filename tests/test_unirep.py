"""Uni-Rep: exact ids of known sizes, encode/parse round trips, and robustness of the parser."""

import functools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lumina_mgpt.errors import FormatError
from lumina_mgpt.formats import (
    ImageCursor,
    ImageSegment,
    TextSegment,
    UniRepError,
    bucket_sizes,
    check_image_size,
    encode_image,
    get_layout,
    grid_shape,
    image_block_length,
    parse,
)
from lumina_mgpt.formats.unirep import CODE, END_IMAGE, END_LINE, PAST_END
from vocab_fixtures import v1_tokenizer, v2_tokenizer

HYPOTHESIS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@functools.cache
def layout(name):
    tokenizer = {"lumina-mgpt": v1_tokenizer, "lumina-mgpt-2": v2_tokenizer}[name]()
    return get_layout(name, tokenizer)


# Text ids that are plain BPE tokens in each fixture vocabulary.
TEXT_ID_RANGE = {"lumina-mgpt": (10_004, 65_536), "lumina-mgpt-2": (0, 151_643)}


def test_v1_512x256_block_is_exactly_the_formats_md_ids():
    # Grid 16 rows x 32 cols. Codes 0 and 1 are the tokens IMGIMGAZ and IMGIMGBZ; the fixture
    # sorts the IMGIMG names from id 4 on, so IMGIMGAZ = 4 and IMGIMGBZ comes after
    # IMGIMGAZ and the 1110 names IMGIMGB?..Z (10-19, 100-199, 1000-1999): 4 + 1 + 1110 = 1115.
    grid = np.zeros((16, 32), np.int64)
    grid[:, -1] = 1
    row = [4] * 31 + [1115] + [8803]  # codes then <reserved08799>
    # <racm3:break>, H = 256 px -> n 8 -> <reserved08808> = 8812, W = 512 px -> n 16 -> 8820
    expected = [8197, 8812, 8820] + row * 16 + [8196]
    ids = encode_image(grid, layout("lumina-mgpt"))
    assert ids.dtype == np.int64
    assert ids.tolist() == expected
    assert len(expected) == 16 * 33 + 4 == image_block_length(512, 256, layout("lumina-mgpt"))


def test_v2_512x256_block_is_exactly_the_formats_md_ids():
    # Grid 32 rows x 64 cols, codes at 155000 + c; the fixture puts <reserved08800+n> at 151671 + n.
    grid = np.tile(np.arange(64), (32, 1)) * 100
    row = [155_000 + 100 * c for c in range(64)] + [151_670]
    expected = [151_665, 151_679, 151_687] + row * 32 + [151_666]
    ids = encode_image(grid, layout("lumina-mgpt-2"))
    assert ids.tolist() == expected
    assert len(expected) == 32 * 65 + 4 == image_block_length(512, 256, layout("lumina-mgpt-2"))


@pytest.mark.parametrize(
    "name, side, length",
    [("lumina-mgpt", 512, 1060), ("lumina-mgpt", 768, 2356), ("lumina-mgpt", 1024, 4164), ("lumina-mgpt-2", 768, 9316)],
)
def test_block_lengths_of_the_official_sizes(name, side, length):
    assert image_block_length(side, side, layout(name)) == length
    rows, cols = grid_shape(side, side, layout(name))
    assert len(encode_image(np.zeros((rows, cols), np.int64), layout(name))) == length


@pytest.mark.parametrize(
    "width, height, message",
    [
        (
            500,
            256,
            "multiples of 32; accepted: multiples of 32 from 32 to 4096 with aspect ratio <= 4; "
            "nearest valid size: 512x256",
        ),
        (1024, 224, "aspect ratio must be at most 4:1; accepted: .*nearest valid size: 1024x256"),
        (0, 256, "positive integers"),
        (8192, 4096, "longest side must be at most 4096.*nearest valid size: 4096x4096"),
    ],
)
def test_unaccepted_sizes_say_what_is_accepted(width, height, message):
    with pytest.raises(FormatError, match=message):
        check_image_size(width, height, layout("lumina-mgpt"))


def test_grid_without_a_size_indicator_is_refused():
    with pytest.raises(FormatError, match="grid width of 3 latent cells .* multiples of 2"):
        encode_image(np.zeros((2, 3), np.int64), layout("lumina-mgpt"))
    with pytest.raises(FormatError, match="image codes must lie in 0..8191"):
        encode_image(np.full((2, 2), 8192), layout("lumina-mgpt"))


def test_open_panel_block_announces_the_whole_panel_and_has_no_end():
    v2 = layout("lumina-mgpt-2")
    reference = np.arange(4 * 8).reshape(4, 8)
    ids = encode_image(reference, v2, panel_rows=8)
    assert ids[:3].tolist() == [151_665, 151_671 + 2, 151_671 + 2]  # 8 rows = 64 px = n 2
    assert ids[-1] == v2.end_line_id and len(ids) == 3 + 4 * 9
    (image,) = parse(ids, v2)
    assert (image.height, image.width, image.complete) == (64, 64, False)
    assert np.array_equal(image.codes, reference)


def test_parse_names_the_position_and_what_was_expected():
    v1 = layout("lumina-mgpt")
    text = np.arange(10_100, 10_110)
    block = encode_image(np.zeros((2, 4), np.int64), v1)
    stream = np.concatenate([text, block])
    stream[10 + 3 + 4] = 5012  # where the first <end-of-line> belongs
    with pytest.raises(UniRepError, match="position 17: expected <end-of-line> after 4 codes, got id 5012"):
        parse(stream, v1)
    stream = np.concatenate([text, block])
    stream[-1] = 10_500
    with pytest.raises(UniRepError, match=f"position {len(stream) - 1}: expected <end-of-image> after 2 rows, got id 10500"):
        parse(stream, v1)
    stream = np.concatenate([text, block])
    stream[11] = 10_500
    with pytest.raises(UniRepError, match="position 11: expected the height size indicator"):
        parse(stream, v1)
    with pytest.raises(UniRepError, match="position 2: id 8803 belongs inside an image"):
        parse(np.array([10_100, 10_101, 8803]), v1)


def test_image_cursor_matches_the_encoded_block():
    cursor = ImageCursor(rows=2, cols=4)
    kinds = cursor.kind(np.arange(cursor.body_length + 2))
    assert kinds.tolist() == [CODE] * 4 + [END_LINE] + [CODE] * 4 + [END_LINE] + [END_IMAGE, PAST_END, PAST_END]
    assert cursor.kind(4) == END_LINE and cursor.kind(10) == END_IMAGE
    lay = layout("lumina-mgpt")
    assert ImageCursor.for_size(64, 32, lay) == cursor
    body = encode_image(np.zeros((2, 4), np.int64), lay)[3:]
    assert cursor.body_length == len(body)
    expected = np.select([body == lay.end_line_id, body == lay.end_image_id], [END_LINE, END_IMAGE], CODE)
    assert np.array_equal(cursor.kind(np.arange(len(body))), expected)


def _stream(data, name):
    """Text and images at random bucket sizes (in the 512 buckets); returns ids and the parts."""
    lay = layout(name)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    low, high = TEXT_ID_RANGE[name]
    sizes = bucket_sizes(512)
    parts = []
    for _ in range(data.draw(st.integers(1, 3))):
        parts.append(("text", rng.integers(low, high, data.draw(st.integers(0, 5)))))
        width, height = data.draw(st.sampled_from(sizes))
        rows, cols = grid_shape(width, height, lay)
        parts.append(("image", rng.integers(0, lay.codebook_size, (rows, cols)), width, height))
    parts.append(("text", rng.integers(low, high, data.draw(st.integers(0, 3)))))
    ids = np.concatenate([p[1] if p[0] == "text" else encode_image(p[1], lay) for p in parts])
    return ids, [p for p in parts if p[0] == "image" or len(p[1])]


@pytest.mark.parametrize("name", ["lumina-mgpt", "lumina-mgpt-2"])
@HYPOTHESIS
@given(data=st.data())
def test_encode_then_parse_gives_back_every_grid(name, data):
    ids, parts = _stream(data, name)
    segments = parse(ids, layout(name))
    assert len(segments) == len(parts)
    for segment, part in zip(segments, parts):
        if part[0] == "text":
            assert isinstance(segment, TextSegment) and np.array_equal(segment.ids, part[1])
        else:
            assert isinstance(segment, ImageSegment) and segment.complete
            assert (segment.width, segment.height) == part[2:]
            assert np.array_equal(segment.codes, part[1]) and segment.partial_row.size == 0


def _check_consistent(segments, lay, total):
    """Invariants every parse result obeys: contiguous cover, right shapes, nothing incomplete but the last."""
    position = 0
    for index, segment in enumerate(segments):
        assert segment.start == position
        if isinstance(segment, TextSegment):
            position += len(segment.ids)
            continue
        rows = segment.height // lay.downsample
        cols = segment.width // lay.downsample
        assert segment.codes.shape == (segment.codes.shape[0], cols) or segment.codes.size == 0
        assert segment.codes.shape[0] <= rows
        assert len(segment.partial_row) <= cols
        if segment.complete:
            assert segment.codes.shape == (rows, cols)
            assert segment.length == rows * (cols + 1) + 4
        else:
            assert index == len(segments) - 1
        position += segment.length
    assert position == total


@pytest.mark.parametrize("name", ["lumina-mgpt", "lumina-mgpt-2"])
@HYPOTHESIS
@given(data=st.data())
def test_mutated_streams_parse_or_raise_unirep_error(name, data):
    lay = layout(name)
    ids, _ = _stream(data, name)
    ids = list(ids)
    interesting = [lay.start_image_id, lay.end_image_id, lay.end_line_id, lay.separator_id, -3, lay.vocab_size]
    interesting += list(lay.size_indicator_ids[:6]) + list(lay.code_ids[:3])
    token = st.one_of(st.sampled_from(interesting), st.integers(-5, lay.vocab_size + 5))
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["delete", "insert", "replace", "truncate"]))
        where = data.draw(st.integers(0, max(len(ids) - 1, 0)))
        if kind == "delete" and ids:
            del ids[where]
        elif kind == "insert":
            ids.insert(where, data.draw(token))
        elif kind == "replace" and ids:
            ids[where] = data.draw(token)
        else:
            ids = ids[:where]
    try:
        segments = parse(np.asarray(ids, np.int64), lay)
    except UniRepError:
        return
    _check_consistent(segments, lay, len(ids))


@HYPOTHESIS
@given(ids=st.lists(st.integers(-2, 8_900), max_size=300))
def test_random_streams_parse_or_raise_unirep_error(ids):
    lay = layout("lumina-mgpt")
    try:
        segments = parse(np.asarray(ids, np.int64), lay)
    except UniRepError:
        return
    _check_consistent(segments, lay, len(ids))


@pytest.mark.parametrize("name", ["lumina-mgpt", "lumina-mgpt-2"])
@HYPOTHESIS
@given(data=st.data())
def test_cut_off_streams_parse_to_the_written_part(name, data):
    lay = layout(name)
    ids, parts = _stream(data, name)
    cut = data.draw(st.integers(0, len(ids)))
    segments = parse(ids[:cut], lay)
    _check_consistent(segments, lay, cut)
    lengths = [len(p[1]) if p[0] == "text" else image_block_length(p[2], p[3], lay) for p in parts]
    starts = np.cumsum([0] + lengths)
    for segment in segments:
        index = int(np.searchsorted(starts, segment.start, side="right")) - 1
        part, written = parts[index], min(cut, starts[index + 1]) - segment.start
        if isinstance(segment, TextSegment):
            offset = segment.start - starts[index]
            assert np.array_equal(segment.ids, part[1][offset : offset + len(segment.ids)])
            continue
        # How many ids of this image made it in tells exactly what must be known about it.
        grid = part[1]
        rows, cols = grid.shape
        assert segment.start == starts[index] and segment.length == written
        assert segment.complete == (written == lengths[index])
        assert segment.height == (part[3] if written >= 2 else 0)
        assert segment.width == (part[2] if written >= 3 else 0)
        rows_done = min(max(written - 3, 0) // (cols + 1), rows)
        assert np.array_equal(segment.codes, grid[:rows_done]) or rows_done == 0 == segment.codes.size
        in_row = max(written - 3, 0) - rows_done * (cols + 1) if rows_done < rows else 0
        assert np.array_equal(segment.partial_row, grid[rows_done, :in_row] if in_row else [])
