"""The decode step: its grammar comes from formats (the one copy of the Uni-Rep rules), and it compiles
with torch.compile(fullgraph=True) on CPU, giving the eager tokens."""

import numpy as np
import pytest

from lumina_mgpt.formats import encode_image, get_layout
from lumina_mgpt.formats.unirep import FREE_CODE, forced_image_ids


@pytest.fixture(scope="module")
def layout():
    return get_layout("compact", text_vocab_size=48, codebook_size=40, downsample=16, max_indicator=8)


@pytest.mark.parametrize("rows, cols", [(2, 4), (6, 6), (8, 2)])
def test_forced_ids_are_what_encode_image_writes(layout, rows, cols):
    """Every forced id is the id encode_image writes at that position after <start-of-image>, and the free
    positions are exactly where it writes codes."""
    codes = np.random.default_rng(0).integers(0, layout.codebook_size, (rows, cols))
    block = encode_image(codes, layout)[1:]
    forced = forced_image_ids(rows, cols, layout)
    assert forced.shape == block.shape and forced.dtype == np.int64
    free = forced == FREE_CODE
    np.testing.assert_array_equal(block[~free], forced[~free])
    np.testing.assert_array_equal(layout.ids_to_codes(block[free]), codes.reshape(-1))
