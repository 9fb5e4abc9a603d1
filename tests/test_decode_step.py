"""The decode step: its grammar comes from formats (the one copy of the Uni-Rep rules), and it compiles
with torch.compile(fullgraph=True) on CPU, with no graph break, giving the eager tokens."""

import numpy as np
import pytest
import torch

from lumina_mgpt.errors import GenerationError
from lumina_mgpt.formats import encode_image, get_layout
from lumina_mgpt.formats.unirep import FREE_CODE, forced_image_ids
from lumina_mgpt.generation.engine import Engine, GenerationSettings
from lumina_mgpt.generation.sampling import SamplingSettings
from lumina_mgpt.model import ModelConfig, Transformer


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


def small_model(layout):
    torch.manual_seed(0)
    config = ModelConfig.preset("tiny", vocab_size=layout.vocab_size, max_position_embeddings=256)
    model = Transformer(config).eval()
    with torch.no_grad():  # confident enough that SJD accepts drafts
        model.lm_head.weight.mul_(40)
    return model


def decode_all_ways(engine, layout):
    """Plain and SJD images with CFG, and a text run (text sampling, an image opened mid-answer)."""
    rng = np.random.default_rng(1)
    prompts = [list(rng.integers(0, 48, n)) + [layout.separator_id] for n in (3, 9)]
    image = GenerationSettings(image=SamplingSettings(temperature=1.0, top_k=20), cfg=3.0)
    text = GenerationSettings(image=SamplingSettings(temperature=1.0), text=SamplingSettings(temperature=1.0), cfg=1.0)
    plain = engine.generate_images(prompts, 64, 32, image, [1, 2], progress=False)
    sjd = engine.generate_images(prompts, 64, 32, image, [1, 2], progress=False, sjd_window=4)
    engine.text_bias[layout.start_image_id] += 3.0  # open images often, so the text run crosses one
    try:
        answers = engine.generate_text(prompts, text, [1, 2], max_new_tokens=24, image_size=(64, 32), progress=False)
    finally:
        engine.text_bias[layout.start_image_id] -= 3.0
    return plain, sjd, answers


def check_compiled_equals_eager(layout, compile_options):
    model = small_model(layout)
    eager = decode_all_ways(Engine(model, layout, compile_decode=False), layout)
    torch._dynamo.reset()
    compiled = decode_all_ways(Engine(model, layout, compile_decode=compile_options), layout)
    for eager_outputs, compiled_outputs in zip(eager, compiled):
        for expected, got in zip(eager_outputs, compiled_outputs):
            np.testing.assert_array_equal(got, expected)
    (first_answer, _) = eager[2]
    assert layout.start_image_id in first_answer  # the text run did cross an image


def test_step_traces_into_one_graph_and_gives_the_eager_tokens(layout):
    """fullgraph=True makes any graph break (a host sync, data-dependent Python) an error. Graph breaks are
    dynamo's to find: the eager backend runs dynamo's trace without inductor's slow code generation (the
    slow test below compiles with inductor)."""
    check_compiled_equals_eager(layout, {"backend": "eager"})


@pytest.mark.slow
def test_inductor_compiled_step_gives_the_eager_tokens_on_cpu(layout):
    """The step as inductor compiles it (CPU C++ kernels; about 2 minutes of compilation on 2 cores)."""
    check_compiled_equals_eager(layout, {})


@pytest.mark.parametrize("value", ["yes", 1, ["backend"]])
def test_bad_compile_option_is_refused(layout, value):
    with pytest.raises(GenerationError, match="compile_decode must be None .compile on CUDA., True, False or a dict"):
        Engine(small_model(layout), layout, compile_decode=value)
