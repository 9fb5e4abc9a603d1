"""The generation engine: CFG, structure forcing, status-aware sampling, batching, seeds."""

import numpy as np
import pytest
import torch

from lumina_mgpt.errors import FormatError, GenerationError
from lumina_mgpt.formats import ImageSegment, get_layout, grid_shape, parse
from lumina_mgpt.generation.engine import Engine, GenerationSettings, guidance_scales
from lumina_mgpt.generation.sampling import SamplingSettings
from lumina_mgpt.model import ModelConfig, Transformer

TEXT_VOCAB = 48
WIDTH, HEIGHT = 64, 32  # a 2 x 4 grid at 16x downsampling


@pytest.fixture(scope="module")
def layout():
    return get_layout("compact", text_vocab_size=TEXT_VOCAB, codebook_size=40, downsample=16, max_indicator=8)


def tiny_model(layout, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    config = ModelConfig.preset("tiny", vocab_size=layout.vocab_size, max_position_embeddings=256)
    model = Transformer(config).to(dtype).eval()
    with torch.no_grad():  # larger logits than the 0.02 init, so that sampling is far from uniform
        model.lm_head.weight.mul_(40)
    return model


def prompts_of_lengths(layout, lengths, seed=1):
    rng = np.random.default_rng(seed)
    return [list(rng.integers(0, TEXT_VOCAB, n)) + [layout.separator_id] for n in lengths]


def full_logits(model, ids):
    with torch.no_grad():
        return model(torch.as_tensor([ids]))[0, -1]


def test_greedy_cfg_equals_formula_from_separate_forwards(layout):
    """Every greedy code is the argmax of uncond + s*(cond - uncond) computed from two full forwards, up to
    float32 noise: the engine's cached, batched forwards round differently, so a near-tie may go either way."""
    model = tiny_model(layout)
    engine = Engine(model, layout)
    cfg = 3.0
    settings = GenerationSettings(image=SamplingSettings(temperature=0.0), cfg=cfg)
    prompts = prompts_of_lengths(layout, [5, 9])
    grids = engine.generate_images(prompts, WIDTH, HEIGHT, settings, seeds=[0, 1], progress=False)
    rows, cols = grid_shape(WIDTH, HEIGHT, layout)
    code_ids = torch.as_tensor(layout.code_ids)
    header = [layout.start_image_id, layout.size_indicator_ids[HEIGHT // 32], layout.size_indicator_ids[WIDTH // 32]]
    for prompt, grid in zip(prompts, grids):
        assert grid.shape == (rows, cols)
        body = []
        for r in range(rows):
            for c in range(cols):
                cond = full_logits(model, prompt + header + body)[code_ids]
                uncond = full_logits(model, header + body)[code_ids]
                guided = uncond + cfg * (cond - uncond)
                assert guided[grid[r, c]] >= guided.max() - 1e-4 * guided.abs().max()
                body.append(layout.code_ids[grid[r, c]])
            body.append(layout.end_line_id)


def test_guided_logits_match_formula_to_1e5(layout):
    """The engine's first-step logits of the conditional and unconditional rows equal two separate full
    forwards (1e-5) at the image-code rows, the only ones an image run computes, and the guided logits it
    samples from are uncond + cfg * (cond - uncond)."""
    model = tiny_model(layout)
    engine = Engine(model, layout)
    steps = []
    cfg = 2.5
    settings = GenerationSettings(image=SamplingSettings(temperature=0.0), cfg=cfg)
    prompts = prompts_of_lengths(layout, [3, 11])
    engine.generate_images(prompts, WIDTH, HEIGHT, settings, seeds=[0, 0], progress=False, on_step=steps.append)
    header = [layout.start_image_id, layout.size_indicator_ids[1], layout.size_indicator_ids[2]]
    first = steps[0]
    codes = list(layout.code_ids)
    for i, prompt in enumerate(prompts):
        cond, uncond = full_logits(model, prompt + header)[codes], full_logits(model, header)[codes]
        torch.testing.assert_close(first.logits[i, 0], cond, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(first.logits[len(prompts) + i, 0], uncond, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(first.guided[i, 0], uncond + cfg * (cond - uncond), rtol=1e-5, atol=1e-4)
    rows, cols = grid_shape(WIDTH, HEIGHT, layout)
    assert len(steps) == rows * (cols + 1) + 1  # the prefill's choice, then one step per token


def test_decay_to_4_guides_each_image_token_with_the_official_v2_scale(layout):
    """The official v2 CFG processor, transcribed: before the token at n (tokens after <start-of-image>, so
    the size indicators and <end-of-line>s count), scale = max(4, scale * (1 - n / (h * w))) with h, w
    twice the size indicators. The logits the engine samples from at every body token equal
    uncond + scale_n * (cond - uncond) from two full forwards."""
    model = tiny_model(layout)
    engine = Engine(model, layout)
    size, rows, cols, cfg = 96, 6, 6, 20.0  # size indicators 3 x 3: the official h * w is 6 * 6
    settings = GenerationSettings(image=SamplingSettings(temperature=0.0), cfg=cfg, cfg_schedule="decay-to-4")
    steps = []
    (prompt,) = prompts_of_lengths(layout, [5])
    (grid,) = engine.generate_images([prompt], size, size, settings, seeds=[0], progress=False, on_step=steps.append)
    sampled_from = [step.guided[:, 0] for step in steps]

    expected, scale = [], cfg
    for n in range(2, 2 + rows * (cols + 1)):
        scale = max(4.0, scale * (1 - n / (6 * 6)))
        expected.append(scale)
    assert expected[0] == pytest.approx(cfg * 34 / 36) and expected[7] == pytest.approx(5.19, abs=0.01)
    assert expected[8:] == [4.0] * (len(expected) - 8)
    code_ids = torch.as_tensor(layout.code_ids)
    header = [layout.start_image_id, layout.size_indicator_ids[3], layout.size_indicator_ids[3]]
    body = []
    for j, scale in enumerate(expected):
        if j % (cols + 1) == cols:
            body.append(layout.end_line_id)
            continue
        cond = full_logits(model, prompt + header + body)[code_ids]
        uncond = full_logits(model, header + body)[code_ids]
        torch.testing.assert_close(sampled_from[j][0], uncond + scale * (cond - uncond), rtol=1e-5, atol=1e-4)
        body.append(layout.code_ids[grid[j // (cols + 1), j % (cols + 1)]])


def test_decay_to_4_raises_a_small_cfg_to_4_and_cfg_1_stays_unguided():
    """As in the official processor: max(4, ...) lifts any scale below 4, and 1 turns guidance off."""
    constant = GenerationSettings(cfg=2.0)
    decaying = GenerationSettings(cfg=2.0, cfg_schedule="decay-to-4")
    assert guidance_scales(constant, 3, 3, 44) == [2.0] * 44
    assert guidance_scales(decaying, 3, 3, 44)[2:] == [4.0] * 42
    assert not GenerationSettings(cfg=1.0, cfg_schedule="decay-to-4").guided

def test_batched_prompts_equal_one_at_a_time(layout):
    """Different prompt lengths in one batch give the same images as alone, with the same seeds."""
    model = tiny_model(layout, dtype=torch.float64)
    engine = Engine(model, layout)
    settings = GenerationSettings(image=SamplingSettings(temperature=1.0, top_k=20), cfg=4.0)
    prompts = prompts_of_lengths(layout, [2, 7, 13])
    seeds = [11, 22, 33]
    together = engine.generate_images(prompts, WIDTH, HEIGHT, settings, seeds, progress=False)
    for prompt, seed, grid in zip(prompts, seeds, together):
        (alone,) = engine.generate_images([prompt], WIDTH, HEIGHT, settings, [seed], progress=False)
        np.testing.assert_array_equal(alone, grid)


def test_seeds_reproduce_and_differ(layout):
    model = tiny_model(layout)
    engine = Engine(model, layout)
    settings = GenerationSettings(image=SamplingSettings(temperature=1.0, top_k=0), cfg=1.0)
    prompts = prompts_of_lengths(layout, [4, 4])
    a = engine.generate_images(prompts, WIDTH, HEIGHT, settings, [5, 6], progress=False)
    b = engine.generate_images(prompts, WIDTH, HEIGHT, settings, [5, 6], progress=False)
    np.testing.assert_array_equal(np.stack(a), np.stack(b))
    assert not np.array_equal(a[0], a[1])  # same prompt, other seed


@pytest.mark.parametrize("size", [(64, 32), (32, 64), (96, 96), (128, 32)])
def test_every_image_parses_to_the_requested_grid(layout, size):
    model = tiny_model(layout)
    engine = Engine(model, layout)
    width, height = size
    settings = GenerationSettings(image=SamplingSettings(temperature=1.0), cfg=2.0)
    prompts = prompts_of_lengths(layout, [3, 6])
    rows_seen = []
    grids = engine.generate_images(
        prompts, width, height, settings, [0, 1], progress=False, on_row=lambda r, codes: rows_seen.append((r, codes))
    )
    rows, cols = grid_shape(width, height, layout)
    header = [layout.start_image_id, layout.size_indicator_ids[height // 32], layout.size_indicator_ids[width // 32]]
    for i, grid in enumerate(grids):
        body = np.concatenate([np.append(layout.codes_to_ids(row), layout.end_line_id) for row in grid])
        stream = np.concatenate([prompts[i], header, body, [layout.end_image_id]])
        segments = parse(stream, layout)
        image = segments[-1]
        assert isinstance(image, ImageSegment) and image.complete
        assert (image.width, image.height) == (width, height)
        np.testing.assert_array_equal(image.codes, grid)
    assert [r for r, _ in rows_seen] == list(range(rows))
    np.testing.assert_array_equal(np.stack([codes for _, codes in rows_seen], axis=1), np.stack(grids))


class BigramModel(torch.nn.Module):
    """A stand-in language model whose next-token logits depend only on the last token."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = torch.nn.Parameter(table, requires_grad=False)
        self.config = ModelConfig.preset("tiny", vocab_size=table.shape[0], max_position_embeddings=512)

    def new_cache(self, batch_size, max_len, device=None, dtype=None):
        return {"last": None}

    def prefill(self, input_ids, cache, prompt_lengths, head=None):
        return self.table[input_ids[:, -1]]

    def decode(self, tokens, cache, head=None):
        return self.table[tokens]


def bigram_table(layout, after_prompt, after_image):
    """Text-mode preferences: the prompt's last token leads to `after_prompt`, <end-of-image> to
    `after_image`, every text token to the separator; inside images codes have random logits."""
    torch.manual_seed(3)
    vocab = layout.vocab_size
    table = torch.randn(vocab, vocab)
    table[:, layout.separator_id] = 5.0
    table[layout.separator_id, after_prompt] = 50.0
    table[layout.end_image_id, after_image] = 50.0
    return table


def test_settings_switch_at_image_boundaries(layout):
    """Text uses text settings; after <start-of-image> the engine writes the header, samples codes with
    image settings (greedy here) and forces the structure; after <end-of-image> text settings again."""
    table = bigram_table(layout, after_prompt=layout.start_image_id, after_image=7)
    engine = Engine(BigramModel(table), layout)
    settings = GenerationSettings(
        image=SamplingSettings(temperature=0.0), text=SamplingSettings(temperature=0.0), cfg=1.0
    )
    prompt = [3, 4, layout.separator_id]
    (out,) = engine.generate_text([prompt], settings, [0], max_new_tokens=64, image_size=(WIDTH, HEIGHT), progress=False)
    rows, cols = grid_shape(WIDTH, HEIGHT, layout)
    block = 3 + rows * (cols + 1) + 1
    assert out[0] == layout.start_image_id
    assert list(out[1:3]) == [layout.size_indicator_ids[HEIGHT // 32], layout.size_indicator_ids[WIDTH // 32]]
    code_ids = torch.as_tensor(layout.code_ids)
    previous = layout.size_indicator_ids[WIDTH // 32]
    for j, token in enumerate(out[3: block - 1]):
        if j % (cols + 1) == cols:
            assert token == layout.end_line_id
        else:
            assert token == int(code_ids[table[previous][code_ids].argmax()])  # image settings: greedy over codes
        previous = token
    assert out[block - 1] == layout.end_image_id
    assert out[block] == 7  # back in text mode: the text table's choice, not a code
    assert out[-1] == layout.separator_id and len(out) == block + 2


def test_text_generation_stops_at_separator_and_never_emits_image_tokens(layout):
    table = bigram_table(layout, after_prompt=9, after_image=7)
    table[:, layout.code_ids[0]] = 100.0  # codes are forbidden in text, however likely
    table[9, layout.separator_id] = -50.0
    engine = Engine(BigramModel(table), layout)
    settings = GenerationSettings(text=SamplingSettings(temperature=1.0, top_k=5), cfg=1.0)
    prompts = [[1, 2, layout.separator_id], [5, layout.separator_id]]
    outs = engine.generate_text(prompts, settings, [0, 1], max_new_tokens=40, image_size=(WIDTH, HEIGHT), progress=False)
    for out in outs:
        assert out[-1] == layout.separator_id
        assert np.count_nonzero(out == layout.separator_id) == 1
        assert not layout.image_code_mask()[out].any()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(cfg=-1.0), "cfg must be >= 0"),
        (dict(cfg=4.0, cfg_schedule="linear"), "unknown cfg_schedule 'linear'; accepted: constant, decay-to-4"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(GenerationError, match=message):
        GenerationSettings(**kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(top_k=-1), "top_k must be"), (dict(temperature=-0.5), "temperature must be >= 0"), (dict(top_p=0.0), "top_p")],
)
def test_bad_sampling_settings_are_refused(kwargs, message):
    with pytest.raises(GenerationError, match=message):
        SamplingSettings(**kwargs)


def test_bad_requests_are_refused_before_compute(layout):
    model = tiny_model(layout)
    engine = Engine(model, layout)
    settings = GenerationSettings(cfg=4.0)
    with pytest.raises(FormatError, match="nearest valid size: 64x32"):
        engine.generate_images([[1, layout.separator_id]], 50, 32, settings, [0], progress=False)
    with pytest.raises(GenerationError, match="context"):
        engine.generate_images([[1] * 250], WIDTH, HEIGHT, settings, [0], progress=False)
    with pytest.raises(GenerationError, match="one seed per prompt"):
        engine.generate_images([[1], [2]], WIDTH, HEIGHT, settings, [0], progress=False)


def test_image_runs_follow_weight_updates_between_calls(layout):
    """Image runs use a code-only copy of the head; changing the model's head between calls must change
    the images exactly as a fresh engine sees them."""
    model = tiny_model(layout)
    engine = Engine(model, layout)
    settings = GenerationSettings(image=SamplingSettings(temperature=0.0), cfg=2.0)
    prompts = prompts_of_lengths(layout, [4])
    before = engine.generate_images(prompts, WIDTH, HEIGHT, settings, [0], progress=False)
    with torch.no_grad():
        model.lm_head.weight.copy_(torch.randn_like(model.lm_head.weight))
    after = engine.generate_images(prompts, WIDTH, HEIGHT, settings, [0], progress=False)
    fresh = Engine(model, layout).generate_images(prompts, WIDTH, HEIGHT, settings, [0], progress=False)
    np.testing.assert_array_equal(after[0], fresh[0])
    assert not np.array_equal(before[0], after[0])


@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("schedule", ["constant", "decay-to-4"])
def test_continuing_from_given_rows_gives_the_image_they_came_from(layout, window, schedule):
    """Greedy: an image continued from the first k rows of a decoded image is that image, so the given rows
    enter the conditional and unconditional contexts, the positions and the guidance scales as decoded rows
    do; other given rows change the rest of the image."""
    model = tiny_model(layout, dtype=torch.float64)
    engine = Engine(model, layout)
    settings = GenerationSettings(image=SamplingSettings(temperature=0.0), cfg=12.0, cfg_schedule=schedule)
    prompts = prompts_of_lengths(layout, [3, 8])
    full = np.stack(engine.generate_images(prompts, 96, 96, settings, [0, 1], progress=False, sjd_window=window))
    for kept in (1, 4):
        reported = []
        continued = engine.generate_images(
            prompts, 96, 96, settings, [0, 1], progress=False, sjd_window=window, given_rows=full[:, :kept],
            on_row=lambda row, codes: reported.append(row),
        )
        np.testing.assert_array_equal(np.stack(continued), full)
        assert reported == list(range(kept, 6))
    other = (full[:, :1] + 1) % layout.codebook_size
    changed = np.stack(engine.generate_images(prompts, 96, 96, settings, [0, 1], progress=False, given_rows=other))
    np.testing.assert_array_equal(changed[:, :1], other)
    assert not np.array_equal(changed[:, 1:], full[:, 1:])


@pytest.mark.parametrize(
    "given, error, message",
    [
        ([np.zeros((1, 4), np.int64)], GenerationError, "one grid of given rows per prompt: got 1 for 2 prompts"),
        ([np.zeros((1, 3), np.int64)] * 2, GenerationError, r"shape \(k, 4\) with 0 <= k < 2 .*int64 \(1, 3\)"),
        ([np.zeros((2, 4), np.int64)] * 2, GenerationError, r"0 <= k < 2 for a 2x4 image"),
        ([np.zeros((1, 4))] * 2, GenerationError, "must be integer code grids"),
        ([np.zeros((1, 4), np.int64), np.zeros((0, 4), np.int64)], GenerationError, "of one shape"),
        ([np.full((1, 4), 40)] * 2, FormatError, "image codes must lie in 0..39"),
    ],
)
def test_bad_given_rows_are_refused(layout, given, error, message):
    engine = Engine(tiny_model(layout), layout)
    prompts = prompts_of_lengths(layout, [3, 4])
    with pytest.raises(error, match=message):
        engine.generate_images(prompts, WIDTH, HEIGHT, GenerationSettings(cfg=2.0), [0, 1], given_rows=given)


def test_text_runs_finish_an_image_the_prompt_ends_inside(layout):
    """Greedy: cutting an answer anywhere inside an image and asking for the rest gives the rest of the same
    answer, so the engine resumes the image at the prompt's position (grammar, forced tokens, then text)."""
    engine = Engine(tiny_model(layout, dtype=torch.float64), layout)
    engine.text_bias[layout.start_image_id] = 1e4  # open an image at once, and again after each one
    greedy = SamplingSettings(temperature=0.0)
    settings = GenerationSettings(image=greedy, text=greedy, cfg=1.0)
    (prompt,) = prompts_of_lengths(layout, [5])
    (answer,) = engine.generate_text(
        [prompt], settings, [0], max_new_tokens=20, image_size=(WIDTH, HEIGHT), progress=False
    )
    block = 3 + 2 * (4 + 1) + 1
    assert answer[0] == layout.start_image_id and answer[block - 1] == layout.end_image_id
    for cut in (1, 2, 3, 5, 8, block - 1, block):
        (rest,) = engine.generate_text(
            [prompt + list(answer[:cut])], settings, [0], max_new_tokens=20 - cut, image_size=(WIDTH, HEIGHT),
            progress=False,
        )
        np.testing.assert_array_equal(rest, answer[cut:])


def test_a_prompt_ending_inside_an_image_of_another_size_is_refused(layout):
    engine = Engine(tiny_model(layout), layout)
    settings = GenerationSettings(cfg=1.0)
    size_32 = layout.size_indicator_ids[1]
    open_32x32 = [1, 2, layout.separator_id, layout.start_image_id, size_32, size_32]
    with pytest.raises(GenerationError, match="prompt 1 ends inside an image of 32x32 pixels, but image_size is 64x32"):
        engine.generate_text([[1, layout.separator_id], open_32x32], settings, [0, 1], image_size=(WIDTH, HEIGHT))
    with pytest.raises(FormatError, match="expected the width size indicator"):
        engine.generate_text([open_32x32[:5] + [layout.end_line_id]], settings, [0], image_size=(WIDTH, HEIGHT))
