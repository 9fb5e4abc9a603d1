"""Uni-Rep, the unambiguous image representation shared by both model families:

    <start-of-image> <size H> <size W> (c c ... c <eol>) x h <end-of-image>

`encode_image` writes it, `parse` splits any id stream into text and (possibly cut-off) images,
checking every position, `ImageCursor` tells a decoder what kind of token comes next, and
`forced_image_ids` lists the tokens the grammar leaves no choice about (what a decoder writes itself).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np

from lumina_mgpt.errors import FormatError
from lumina_mgpt.formats.layout import VocabLayout


class UniRepError(FormatError):
    """A malformed image inside an id stream; the message names the absolute position."""


# Token kinds inside an image block, as returned by ImageCursor.kind.
CODE, END_LINE, END_IMAGE, PAST_END = 0, 1, 2, 3


def check_image_size(width: int, height: int, layout: VocabLayout, max_ratio: float = 4.0) -> None:
    """FormatError unless width x height (pixels) can be generated or encoded with `layout`."""
    step = layout.pixels_per_indicator
    largest = layout.max_indicator * step
    problem = None
    if int(width) != width or int(height) != height or width <= 0 or height <= 0:
        problem = "sizes must be positive integers"
    elif width % step or height % step:
        problem = f"width and height must be multiples of {step}"
    elif max(width, height) > largest:
        problem = f"the longest side must be at most {largest} (the largest size indicator)"
    elif max(width / height, height / width) > max_ratio:
        problem = f"the aspect ratio must be at most {max_ratio:g}:1"
    if problem is not None:
        w, h = _nearest_valid_size(width, height, step, largest, max_ratio)
        raise FormatError(
            f"image size {width}x{height} is not accepted by layout {layout.name!r}: {problem}; "
            f"accepted: multiples of {step} from {step} to {largest} with aspect ratio <= "
            f"{max_ratio:g}; nearest valid size: {w}x{h}"
        )


def _nearest_valid_size(width: float, height: float, step: int, largest: int, max_ratio: float) -> tuple[int, int]:
    def snap(value: float) -> int:
        return int(min(max(round(max(value, 0) / step), 1) * step, largest))

    w, h = snap(width), snap(height)
    # Grow the short side until the ratio is within the limit.
    while max(w / h, h / w) > max_ratio:
        if w < h:
            w += step
        else:
            h += step
    return w, h


def grid_shape(width: int, height: int, layout: VocabLayout) -> tuple[int, int]:
    """Latent grid (rows, cols) of a width x height image; FormatError for unaccepted sizes."""
    check_image_size(width, height, layout)
    return height // layout.downsample, width // layout.downsample


def image_block_length(width: int, height: int, layout: VocabLayout) -> int:
    """Number of ids of a complete Uni-Rep block: rows * (cols + 1) + 4."""
    rows, cols = grid_shape(width, height, layout)
    return rows * (cols + 1) + 4


def _indicator_for_cells(cells: int, layout: VocabLayout, what: str) -> int:
    per = layout.latent_cells_per_indicator
    if cells <= 0 or cells % per or cells // per > layout.max_indicator:
        raise FormatError(
            f"a grid {what} of {cells} latent cells has no size indicator in layout {layout.name!r}; "
            f"accepted: multiples of {per} up to {layout.max_indicator * per}"
        )
    return layout.size_indicator_ids[cells // per]


def encode_image(codes: np.ndarray, layout: VocabLayout, panel_rows: int | None = None) -> np.ndarray:
    """Uni-Rep ids (int64) of a (rows, cols) grid of image codes.

    With `panel_rows` > rows the block is left open: its indicators announce a panel of
    `panel_rows` rows and no <end-of-image> is written (the reference half of a dual-panel
    image-to-image answer, docs/FORMATS.md); the model continues with the remaining rows.
    """
    codes = np.asarray(codes)
    if codes.ndim != 2 or not np.issubdtype(codes.dtype, np.integer):
        raise FormatError(f"image codes must be a 2-D integer grid (rows, cols), got {codes.dtype} {codes.shape}")
    rows, cols = codes.shape
    total_rows = rows if panel_rows is None else panel_rows
    if total_rows < rows:
        raise FormatError(f"panel_rows ({panel_rows}) must be at least the grid's {rows} rows")
    header = [
        layout.start_image_id,
        _indicator_for_cells(total_rows, layout, "height"),
        _indicator_for_cells(cols, layout, "width"),
    ]
    body = np.empty((rows, cols + 1), dtype=np.int64)
    body[:, :cols] = layout.codes_to_ids(codes)
    body[:, cols] = layout.end_line_id
    tail = [layout.end_image_id] if total_rows == rows else []
    return np.concatenate([np.asarray(header, np.int64), body.reshape(-1), np.asarray(tail, np.int64)])


@dataclass(frozen=True)
class ImageCursor:
    """Which kind of token a rows x cols block expects at body step s (s = 0 is the first code
    after the width indicator). O(1) per step and vectorized over arrays of steps."""

    rows: int
    cols: int

    @classmethod
    def for_size(cls, width: int, height: int, layout: VocabLayout) -> ImageCursor:
        """The cursor of a width x height (pixels) image in `layout`."""
        rows, cols = grid_shape(width, height, layout)
        return cls(rows, cols)

    @property
    def body_length(self) -> int:
        """Ids after the indicators, up to and including <end-of-image>."""
        return self.rows * (self.cols + 1) + 1

    def kind(self, step: Union[int, np.ndarray]) -> Union[int, np.ndarray]:
        """CODE, END_LINE, END_IMAGE or PAST_END for each step."""
        step = np.asarray(step)
        rows_span = self.rows * (self.cols + 1)
        in_rows = np.where(step % (self.cols + 1) == self.cols, END_LINE, CODE)
        kinds = np.where(step < rows_span, in_rows, np.where(step == rows_span, END_IMAGE, PAST_END))
        return int(kinds) if kinds.ndim == 0 else kinds


# In `forced_image_ids`: the position holds an image code, which the model chooses.
FREE_CODE = -1


def forced_image_ids(rows: int, cols: int, layout: VocabLayout) -> np.ndarray:
    """The id the grammar forces at each position of a rows x cols block after <start-of-image>, or
    FREE_CODE where an image code goes: position 0 is the height indicator, 1 the width indicator,
    2 + s body step s (see ImageCursor), and the last one <end-of-image>. int64, length
    2 + rows * (cols + 1) + 1."""
    cursor = ImageCursor(rows, cols)
    kinds = cursor.kind(np.arange(cursor.body_length))
    body = np.select(
        [kinds == CODE, kinds == END_LINE], [FREE_CODE, layout.end_line_id], default=layout.end_image_id
    )
    header = [_indicator_for_cells(rows, layout, "height"), _indicator_for_cells(cols, layout, "width")]
    return np.concatenate([np.asarray(header, np.int64), body.astype(np.int64)])


@dataclass(frozen=True)
class TextSegment:
    """Ids outside any image, starting at absolute position `start`."""

    start: int
    ids: np.ndarray


@dataclass(frozen=True)
class ImageSegment:
    """An image block at absolute position `start`. Sizes are pixels (0 while not yet written).

    `codes` holds the complete rows (rows_done, cols); `partial_row` the codes of a row cut off
    before its <end-of-line>; `complete` is True once <end-of-image> was read."""

    start: int
    width: int
    height: int
    codes: np.ndarray
    complete: bool
    partial_row: np.ndarray
    length: int  # ids of the block present in the stream


Segment = Union[TextSegment, ImageSegment]


def parse(ids: np.ndarray, layout: VocabLayout) -> list[Segment]:
    """Split an id stream into text and image segments, checking every image token.

    Images may be cut off anywhere (complete=False). Raises UniRepError naming the absolute
    position of the first token that breaks the Uni-Rep structure, including image-only tokens
    (codes, <end-of-line>, <end-of-image>) outside an image."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    code_of = layout.ids_to_codes(ids)
    image_only = (code_of >= 0) | (ids == layout.end_line_id) | (ids == layout.end_image_id)
    outside = np.flatnonzero((ids < 0) | (ids >= layout.vocab_size))
    if len(outside):
        where = int(outside[0])
        raise UniRepError(
            f"position {where}: id {int(ids[where])} is outside the vocabulary 0..{layout.vocab_size - 1}"
        )
    starts = np.flatnonzero(ids == layout.start_image_id)
    segments: list[Segment] = []
    position = 0
    while position < len(ids):
        later = starts[starts >= position]
        text_end = int(later[0]) if len(later) else len(ids)
        if text_end > position:
            stray = np.flatnonzero(image_only[position:text_end])
            if len(stray):
                where = position + int(stray[0])
                raise UniRepError(
                    f"position {where}: id {int(ids[where])} belongs inside an image, but no "
                    f"<start-of-image> (id {layout.start_image_id}) is open"
                )
            segments.append(TextSegment(position, ids[position:text_end].copy()))
        if text_end == len(ids):
            break
        image = _parse_image(ids, code_of, text_end, layout)
        segments.append(image)
        position = text_end + image.length
    return segments


def _describe(ids: np.ndarray, position: int) -> str:
    return f"got id {int(ids[position])}" if position < len(ids) else "got the end of the stream"


def _parse_indicator(ids: np.ndarray, position: int, layout: VocabLayout, what: str) -> int | None:
    """Indicator value n >= 1 at `position`, None when the stream ends there."""
    if position >= len(ids):
        return None
    n = layout.size_indicator_value(ids[position])
    if not n:
        raise UniRepError(
            f"position {position}: expected the {what} size indicator (<reserved08801> or above) "
            f"of the image that starts at {position - (1 if what == 'height' else 2)}, {_describe(ids, position)}"
        )
    return n


def _parse_image(ids: np.ndarray, code_of: np.ndarray, start: int, layout: VocabLayout) -> ImageSegment:
    empty, no_row = np.zeros((0, 0), np.int64), np.zeros(0, np.int64)
    n_height = _parse_indicator(ids, start + 1, layout, "height")
    if n_height is None:
        return ImageSegment(start, 0, 0, empty, False, no_row, length=1)
    n_width = _parse_indicator(ids, start + 2, layout, "width")
    height = n_height * layout.pixels_per_indicator
    if n_width is None:
        return ImageSegment(start, 0, height, empty, False, no_row, length=2)
    width = n_width * layout.pixels_per_indicator
    rows = n_height * layout.latent_cells_per_indicator
    cols = n_width * layout.latent_cells_per_indicator
    cursor = ImageCursor(rows, cols)
    body_start = start + 3
    available = min(cursor.body_length, len(ids) - body_start)
    body = ids[body_start : body_start + available]
    kinds = cursor.kind(np.arange(available))
    ok = np.where(
        kinds == CODE,
        code_of[body_start : body_start + available] >= 0,
        np.where(kinds == END_LINE, body == layout.end_line_id, body == layout.end_image_id),
    )
    if not ok.all():
        step = int(np.argmin(ok))
        position = body_start + step
        row, col = divmod(step, cols + 1)
        if kinds[step] == CODE:
            expected = f"an image code (row {row}, column {col} of {rows}x{cols})"
        elif kinds[step] == END_LINE:
            expected = f"<end-of-line> after {cols} codes"
        else:
            expected = f"<end-of-image> after {rows} rows"
        raise UniRepError(f"position {position}: expected {expected}, {_describe(ids, position)}")
    rows_done = min(available // (cols + 1), rows)
    grid = code_of[body_start : body_start + rows_done * (cols + 1)].reshape(rows_done, cols + 1)[:, :cols]
    partial = code_of[body_start + rows_done * (cols + 1) : body_start + available]
    if rows_done == rows:
        partial = partial[:0]  # only the <end-of-image> can follow the last row
    return ImageSegment(
        start=start,
        width=width,
        height=height,
        codes=grid.copy(),
        complete=available == cursor.body_length,
        partial_row=partial.copy(),
        length=3 + available,
    )
