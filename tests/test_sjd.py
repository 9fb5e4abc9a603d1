"""Speculative Jacobi decoding: exact in distribution, exact under greedy decoding, batch-independent rows,
structure forcing inside the window, fewer forwards, and clear refusals."""

import itertools

import numpy as np
import pytest
import torch
from scipy import stats

from lumina_mgpt.errors import GenerationError
from lumina_mgpt.formats import ImageSegment, get_layout, grid_shape, parse
from lumina_mgpt.generation.engine import Engine, GenerationSettings
from lumina_mgpt.generation.sampling import SamplingSettings
from lumina_mgpt.generation.speculative import correction, count_accepted, draw, target_probs
from lumina_mgpt.model import ModelConfig, Transformer

TEXT_VOCAB = 48


@pytest.fixture(scope="module")
def layout():
    return get_layout("compact", text_vocab_size=TEXT_VOCAB, codebook_size=40, downsample=16, max_indicator=8)


def small_model(layout, dtype=torch.float32, logit_scale=40.0, seed=0, **shape):
    """The tiny preset (or `shape` overrides) with a scaled head, so that sampling is far from uniform."""
    torch.manual_seed(seed)
    config = ModelConfig.preset("tiny", vocab_size=layout.vocab_size, max_position_embeddings=256, **shape)
    model = Transformer(config).to(dtype).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(logit_scale)
    return model


def random_prompts(layout, lengths, seed=1):
    rng = np.random.default_rng(seed)
    return [list(rng.integers(0, TEXT_VOCAB, n)) + [layout.separator_id] for n in lengths]


# ---------------------------------------------------------------------------------------------- the rules
def test_one_step_rule_emits_exactly_p():
    """Draft from q, accept with min(1, p/q), else draw from max(0, p - q): the emitted code is distributed
    as p, for a q far from p and for the uniform q of fresh drafts (200,000 draws, chi-square)."""
    generator = torch.Generator().manual_seed(0)
    rows, codes = 200_000, 5
    p = torch.tensor([0.5, 0.25, 0.15, 0.1, 0.0])
    for q in (torch.tensor([0.05, 0.05, 0.1, 0.3, 0.5]), torch.full((codes,), 1 / codes)):
        u = torch.rand(rows, 3, generator=generator)
        drafts = draw(q.expand(rows, codes), u[:, 0])
        target = p.expand(rows, 2, codes)  # p at the draft's position (and one beyond, unused here)
        draft_probs = q.expand(rows, 1, codes)
        unforced = torch.zeros(rows, 1, dtype=torch.bool)
        accepted = count_accepted(target, drafts[:, None], draft_probs, unforced, u[:, 1:2])
        fixed = correction(target, draft_probs, accepted, u[:, 2])
        emitted = torch.where(accepted == 1, drafts, fixed)
        counts = np.bincount(emitted.numpy(), minlength=codes)
        assert counts[4] == 0  # zero target probability is never emitted
        assert stats.chisquare(counts[:4], p[:4].numpy() * rows).pvalue > 0.01


def test_forced_positions_always_pass_and_acceptance_stops_at_the_first_failure():
    target = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]])
    draft_probs = torch.full((1, 3, 2), 0.5)
    u = torch.full((1, 3), 0.5)
    forced = torch.tensor([[False, True, False]])
    # slot 0: p(1) = 1 passes; slot 1: p(1) = 0 but forced; slot 2: p(0) = 0 fails.
    assert count_accepted(target, torch.tensor([[1, 1, 0]]), draft_probs, forced, u).item() == 2
    # A failure in slot 0 hides the passing slots after it.
    assert count_accepted(target, torch.tensor([[0, 1, 1]]), draft_probs, forced, u).item() == 0


def test_target_is_what_plain_decoding_samples_from():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0]])
    probs = target_probs(logits, SamplingSettings(temperature=0.5, top_k=2))
    expected = torch.zeros(1, 4)
    expected[0, :2] = torch.softmax(torch.tensor([4.0, 2.0]), dim=0)
    torch.testing.assert_close(probs, expected)
    torch.testing.assert_close(target_probs(logits, SamplingSettings(temperature=0.0)), torch.tensor([[1.0, 0, 0, 0]]))


# ------------------------------------------------------------------------------------- exact in distribution
def exact_first_codes(model, layout, prompt, header, settings):
    """Exact joint probability of (c(0,0), c(0,1), c(1,0)) of a 2 x 2 image under guided sampling,
    from full forwards over every code triple."""
    code_ids, codes = layout.code_ids, layout.codebook_size
    triples = list(itertools.product(range(codes), repeat=3))
    bodies = [[code_ids[a], code_ids[b], layout.end_line_id, code_ids[c]] for a, b, c in triples]
    with torch.no_grad():
        cond = model(torch.tensor([prompt + header + body for body in bodies]))[:, len(prompt):]
        uncond = model(torch.tensor([header + body for body in bodies]))
    guided = uncond + settings.cfg * (cond - uncond)
    # Logits at the last header token predict c(0,0); after c(0,0) c(0,1); after the <end-of-line> c(1,0).
    probs = target_probs(guided[:, [2, 3, 5]][..., list(code_ids)].double(), settings.image)
    chosen = torch.tensor(triples)[:, :, None]
    joint = probs.gather(-1, chosen).squeeze(-1).prod(dim=-1).numpy()
    return joint / joint.sum()


def first_code_histogram(grids, codes):
    stacked = np.stack(grids)
    cells = (stacked[:, 0, 0] * codes + stacked[:, 0, 1]) * codes + stacked[:, 1, 0]
    return np.bincount(cells, minlength=codes**3)


def goodness_of_fit(counts, probs):
    """Chi-square p-value of counts against probs, cells expecting fewer than 5 pooled."""
    expected = probs * counts.sum()
    large = expected >= 5
    observed, expected = counts[large], expected[large]
    if not large.all():
        observed = np.append(observed, counts[~large].sum())
        expected = np.append(expected, counts.sum() - expected.sum())
    return stats.chisquare(observed, expected).pvalue


def test_sjd_samples_the_distribution_of_plain_decoding():
    """6,000 seeded 2 x 2 images from a 4-code model with CFG, plain and SJD (window 3, so the window spans
    the forced <end-of-line>, and drafts are both accepted and rejected): the joint distribution of the first
    three codes matches the exact one for both, and the two samples match each other. The same counts
    reject a guidance scale of 2.5 instead of 3 (the test has power)."""
    layout = get_layout("compact", text_vocab_size=16, codebook_size=4, downsample=16, max_indicator=4)
    model = small_model(layout, logit_scale=6.0, hidden_size=32, intermediate_size=64, num_heads=2, num_kv_heads=1)
    engine = Engine(model, layout)
    settings = GenerationSettings(image=SamplingSettings(temperature=1.0, top_k=0), cfg=3.0)
    prompt = [1, 5, 9, layout.separator_id]
    header = [layout.start_image_id, layout.size_indicator_ids[1], layout.size_indicator_ids[1]]
    samples = 6000

    plain = engine.generate_images([prompt] * samples, 32, 32, settings, list(range(samples)), progress=False)
    sjd = engine.generate_images(
        [prompt] * samples, 32, 32, settings, list(range(samples, 2 * samples)), progress=False, sjd_window=3
    )
    assert engine.last_stats.forwards < engine.last_stats.tokens  # some drafts were accepted

    exact = exact_first_codes(model, layout, prompt, header, settings)
    plain_counts, sjd_counts = first_code_histogram(plain, 4), first_code_histogram(sjd, 4)
    assert goodness_of_fit(plain_counts, exact) > 0.01
    assert goodness_of_fit(sjd_counts, exact) > 0.01
    seen = (plain_counts + sjd_counts) > 0
    assert stats.chi2_contingency(np.stack([plain_counts[seen], sjd_counts[seen]])).pvalue > 0.01

    wrong = exact_first_codes(model, layout, prompt, header, GenerationSettings(image=settings.image, cfg=2.5))
    assert goodness_of_fit(sjd_counts, wrong) < 1e-3


# ------------------------------------------------------------------------------------------ exact when greedy
@pytest.mark.parametrize("window", [1, 3, 16])
@pytest.mark.parametrize("size", [(64, 32), (96, 96)])
def test_greedy_sjd_equals_greedy_plain(layout, window, size):
    """Greedy targets are deterministic, so SJD must emit exactly plain decoding's tokens: checks the
    window's positions, forced tokens inside it, rollback with rows at different offsets, and CFG."""
    model = small_model(layout, dtype=torch.float64)
    engine = Engine(model, layout)
    settings = GenerationSettings(image=SamplingSettings(temperature=0.0), cfg=3.0)
    prompts = random_prompts(layout, [3, 9, 5])
    plain = engine.generate_images(prompts, *size, settings, [0, 1, 2], progress=False)
    sjd = engine.generate_images(prompts, *size, settings, [0, 1, 2], progress=False, sjd_window=window)
    np.testing.assert_array_equal(np.stack(sjd), np.stack(plain))
    stats_ = engine.last_stats
    rows, cols = grid_shape(*size, layout)
    assert stats_.tokens == rows * (cols + 1)
    assert stats_.forwards < stats_.tokens  # a greedy Jacobi window accepts its converged prefix



def test_sjd_keeps_constant_guidance_under_the_decay_schedule(layout):
    """The official v2 SJD guides every token with the constant scale; only plain decoding decays it."""
    model = small_model(layout, dtype=torch.float64)
    engine = Engine(model, layout)
    greedy = SamplingSettings(temperature=0.0)
    constant = GenerationSettings(image=greedy, cfg=12.0)
    decaying = GenerationSettings(image=greedy, cfg=12.0, cfg_schedule="decay-to-4")
    prompts = random_prompts(layout, [3, 9])
    sjd = engine.generate_images(prompts, 96, 96, decaying, [0, 1], progress=False, sjd_window=4)
    plain_constant = engine.generate_images(prompts, 96, 96, constant, [0, 1], progress=False)
    plain_decaying = engine.generate_images(prompts, 96, 96, decaying, [0, 1], progress=False)
    np.testing.assert_array_equal(np.stack(sjd), np.stack(plain_constant))
    assert not np.array_equal(np.stack(plain_decaying), np.stack(plain_constant))  # the schedule matters here

def test_every_sjd_choice_is_guided_with_the_constant_scale_under_the_decay_schedule(layout):
    """Each step's guided logits (the prefill's first choice included) are uncond + cfg * (cond - uncond) of
    that step's logits, with the constant cfg at every window slot."""
    model = small_model(layout)
    engine = Engine(model, layout)
    settings = GenerationSettings(image=SamplingSettings(temperature=1.0), cfg=12.0, cfg_schedule="decay-to-4")
    steps = []
    engine.generate_images(random_prompts(layout, [3, 9]), 96, 96, settings, [0, 1], progress=False,
                           sjd_window=4, on_step=steps.append)
    assert len(steps) == 1 + engine.last_stats.forwards
    for step in steps:
        cond, uncond = step.logits[:2], step.logits[2:]
        torch.testing.assert_close(step.guided, uncond + 12.0 * (cond - uncond))


def test_greedy_sjd_accepts_long_runs_on_a_predictable_model(layout):
    """A model whose greedy choice is always code 0 (all logits equal; argmax takes the first): every
    carried draft is right and (almost) every fresh uniform draft wrong. A forward that accepts a drafts
    and corrects the next leaves L - a carried drafts and a fresh ones; the next forward accepts the carried
    ones and corrects the first fresh one: L + 2 tokens per two forwards."""
    model = small_model(layout, logit_scale=0.0, dtype=torch.float64)
    engine = Engine(model, layout)
    settings = GenerationSettings(image=SamplingSettings(temperature=0.0), cfg=1.0)
    (grid,) = engine.generate_images(random_prompts(layout, [4]), 96, 96, settings, [0], progress=False, sjd_window=8)
    assert (grid == 0).all()
    # 42 tokens after the first one, window 8: at most 2 * 42 / 10 forwards, and one to start.
    assert engine.last_stats.forwards <= 1 + -(-2 * 42 // 10)


# ---------------------------------------------------------------------------- batches, structure, callbacks
def test_sjd_rows_do_not_depend_on_the_batch(layout):
    """Rows accept different counts (they finish after different numbers of forwards alone), yet batched
    results equal one-prompt-at-a-time results, seed for seed."""
    model = small_model(layout, dtype=torch.float64)
    engine = Engine(model, layout)
    settings = GenerationSettings(image=SamplingSettings(temperature=1.0, top_k=20), cfg=4.0)
    prompts = random_prompts(layout, [2, 7, 13, 4])
    seeds = [11, 22, 33, 44]
    together = engine.generate_images(prompts, 96, 96, settings, seeds, progress=False, sjd_window=6)
    forwards_alone = []
    for prompt, seed, grid in zip(prompts, seeds, together):
        (alone,) = engine.generate_images([prompt], 96, 96, settings, [seed], progress=False, sjd_window=6)
        np.testing.assert_array_equal(alone, grid)
        forwards_alone.append(engine.last_stats.forwards)
    assert len(set(forwards_alone)) > 1


@pytest.mark.parametrize("size", [(64, 32), (32, 64), (128, 32)])
def test_sjd_images_parse_and_rows_are_reported_in_order(layout, size):
    model = small_model(layout)
    engine = Engine(model, layout)
    width, height = size
    settings = GenerationSettings(image=SamplingSettings(temperature=1.0), cfg=2.0)
    prompts = random_prompts(layout, [3, 6])
    reported = []
    grids = engine.generate_images(
        prompts, width, height, settings, [0, 1], progress=False, sjd_window=5,
        on_row=lambda r, codes: reported.append((r, codes)),
    )
    rows, cols = grid_shape(width, height, layout)
    header = [layout.start_image_id, layout.size_indicator_ids[height // 32], layout.size_indicator_ids[width // 32]]
    for prompt, grid in zip(prompts, grids):
        body = np.concatenate([np.append(layout.codes_to_ids(row), layout.end_line_id) for row in grid])
        (*_, image) = parse(np.concatenate([prompt, header, body, [layout.end_image_id]]), layout)
        assert isinstance(image, ImageSegment) and image.complete and (image.width, image.height) == (width, height)
    assert [r for r, _ in reported] == list(range(rows))
    np.testing.assert_array_equal(np.stack([codes for _, codes in reported], axis=1), np.stack(grids))


# ---------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("window", [0, -3, 2.5, True])
def test_bad_windows_are_refused(layout, window):
    engine = Engine(small_model(layout), layout)
    with pytest.raises(GenerationError, match="sjd_window must be an integer >= 1"):
        engine.generate_images([[1, layout.separator_id]], 64, 32, GenerationSettings(cfg=4.0), [0], sjd_window=window)


def test_window_beyond_the_cache_headroom_is_refused(layout):
    """A 64 x 32 image is 11 tokens after its 3-token header; a 20-token prompt leaves 256 - 23 - 11 = 222."""
    engine = Engine(small_model(layout), layout)
    prompt = [1] * 19 + [layout.separator_id]
    (grid,) = engine.generate_images([prompt], 64, 32, GenerationSettings(cfg=4.0), [0], progress=False, sjd_window=222)
    assert grid.shape == (2, 4)
    with pytest.raises(GenerationError, match="leaves 222; use an sjd_window from 1 to that headroom"):
        engine.generate_images([prompt], 64, 32, GenerationSettings(cfg=4.0), [0], progress=False, sjd_window=223)
