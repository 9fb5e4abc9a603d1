"""The decode loop: batched classifier-free guidance, structure-forced Uni-Rep images,
status-aware sampling, a static KV cache and one compiled decode step.

Every row carries a small state, `image_pos`: -1 while the row writes text, otherwise the index
of the next token inside the block that follows <start-of-image>:
    0: height indicator, 1: width indicator, 2 + j: body token j, 2 + h*(w+1): <end-of-image>,
where body token j is an <end-of-line> when j % (w+1) == w and an image code otherwise. The
engine writes every structural token itself; the model only chooses codes (and text). All
per-step work is tensor work on the device, so the step captures into one CUDA graph.

Images can also be decoded with speculative Jacobi decoding (`sjd_window`, see speculative.py):
the same loop, whose step then verifies a window of drafts in one forward and emits one or more
tokens per row. Rows accept different counts; a prompt's conditional and unconditional rows always
move together, as acceptance is decided on the guided distribution.

The guidance scale may change along the image (`GenerationSettings.cfg_schedule`): the engine looks
it up per row by `image_pos` in a table built for the run (`guidance_scales`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from lumina_mgpt.errors import GenerationError
from lumina_mgpt.formats import VocabLayout, check_image_size, grid_shape
from lumina_mgpt.generation.checks import check_cfg_schedule
from lumina_mgpt.generation.sampling import STREAM_ACCEPT, STREAM_SAMPLE, SamplingSettings, sample
from lumina_mgpt.generation.speculative import (
    correction,
    count_accepted,
    draft_uniforms,
    next_drafts,
    position_uniforms,
    target_probs,
    uniform_drafts,
)

TEXT_MODE = -1
# Cache lengths are rounded up to this, so that nearby requests share one cache (and one CUDA graph).
CACHE_LENGTH_STEP = 256
RowCallback = Callable[[int, np.ndarray], None]
# The official v2 schedule never guides more weakly than this.
DECAY_FLOOR = 4.0


@dataclass(frozen=True)
class GenerationSettings:
    """Status-aware settings: one set inside images, one for text, and the CFG scale (images only).

    `cfg_schedule` "constant" guides every image code with `cfg` (official v1, and our models);
    "decay-to-4" is official Lumina-mGPT 2.0 plain decoding (see `guidance_scales`): the scale
    shrinks along the image down to 4, and a `cfg` below 4 (other than 1, no guidance) is raised to 4.
    Speculative decoding guides with the constant `cfg` under either schedule, as the official code does.
    """

    image: SamplingSettings = field(default_factory=lambda: SamplingSettings(temperature=1.0, top_k=2000))
    text: SamplingSettings = field(default_factory=lambda: SamplingSettings(temperature=1.0, top_k=10))
    cfg: float = 4.0
    cfg_schedule: str = "constant"

    def __post_init__(self):
        if not self.cfg >= 0:
            raise GenerationError(f"cfg must be >= 0 (1 means no guidance), got {self.cfg}")
        check_cfg_schedule(self.cfg_schedule)

    @property
    def guided(self) -> bool:
        return self.cfg != 1.0


def guidance_scales(
    settings: GenerationSettings, height_indicator: int, width_indicator: int, positions: int
) -> list[float]:
    """The CFG scale at image positions 0 .. positions - 1 (`image_pos`, see the module docstring).

    "constant": `cfg` everywhere. "decay-to-4" replays the official v2 CFG logits processor, which
    before the token at position n >= 2 (n tokens follow <start-of-image>: the two size indicators,
    then codes and <end-of-line>s alike) sets scale = max(4, scale * (1 - n / (h * w))), starting
    from `cfg`. The update compounds, and its h, w are twice the size indicators' values (the v1
    latent grid: the processor came from v1 unchanged), a quarter of v2's codes; so the scale
    reaches 4 early in the image. Positions 0 and 1 are never guided (the engine writes them).
    """
    scale = settings.cfg
    if settings.cfg_schedule == "constant":
        return [scale] * positions
    official_grid = (2 * height_indicator) * (2 * width_indicator)
    scales = [scale] * min(positions, 2)
    for n in range(2, positions):
        scale = max(DECAY_FLOOR, scale * (1 - n / official_grid))
        scales.append(scale)
    return scales


@dataclass(frozen=True)
class DecodeStats:
    """The cost of the last run: tokens emitted per prompt after the prefill's first one, and the
    decode forwards the batch ran for them (as many as tokens for plain decoding, fewer with SJD)."""

    tokens: int
    forwards: int

    @property
    def compression(self) -> float:
        """Tokens per decode forward."""
        return self.tokens / max(self.forwards, 1)


class Engine:
    """Generates token streams from a `Transformer` that speaks a `VocabLayout`; `last_stats` is the
    `DecodeStats` of the last call."""

    def __init__(self, model: torch.nn.Module, layout: VocabLayout, compile_decode: bool | None = None):
        self.model = model
        self.layout = layout
        device = next(model.parameters()).device
        self.device = device
        self.code_ids = torch.as_tensor(np.asarray(layout.code_ids), dtype=torch.int64, device=device)
        self.size_ids = torch.as_tensor(layout.size_indicator_ids, dtype=torch.int64, device=device)
        # Text may not contain image-only tokens; <start-of-image> is allowed and switches status.
        forbidden = torch.as_tensor(layout.image_code_mask(), device=device)
        forbidden[[layout.end_line_id, layout.end_image_id]] = True
        forbidden[self.size_ids] = True
        self.text_bias = torch.zeros(layout.vocab_size, device=device).masked_fill(forbidden, float("-inf"))
        if compile_decode is None:
            compile_decode = device.type == "cuda"
        # reduce-overhead captures the step (model decode + sampling) into a CUDA graph.
        self._step, self._speculative_step = self._step_eager, self._speculative_step_eager
        if compile_decode:
            self._step = torch.compile(self._step, mode="reduce-overhead")
            self._speculative_step = torch.compile(self._speculative_step, mode="reduce-overhead")
        self.last_stats: DecodeStats | None = None
        self.cache = None
        self._image_head: torch.nn.Module | None = None

    # ------------------------------------------------------------------ public entry points
    @torch.inference_mode()
    def generate_images(
        self,
        prompts: Sequence[Sequence[int]],
        width: int,
        height: int,
        settings: GenerationSettings,
        seeds: Sequence[int],
        on_row: RowCallback | None = None,
        progress: bool = True,
        sjd_window: int | None = None,
    ) -> list[np.ndarray]:
        """Text-to-image: one (h, w) code grid per prompt.

        Each prompt is the id list of the conversation up to and including the last separator;
        the engine appends <start-of-image> and the size indicators itself. With guidance, the
        unconditional rows see only the image block, as in training's context drop.
        `sjd_window=L` decodes with speculative Jacobi decoding, L drafts verified per forward:
        the same distribution as plain decoding (not the same samples) in fewer forwards, always
        with the constant `settings.cfg` (see GenerationSettings).
        """
        not_a_count = isinstance(sjd_window, bool) or not isinstance(sjd_window, int)
        if sjd_window is not None and (not_a_count or sjd_window < 1):
            raise GenerationError(
                f"sjd_window must be an integer >= 1 (draft tokens verified per forward; 16 is usual), "
                f"or None for plain decoding; got {sjd_window!r}"
            )
        check_image_size(width, height, self.layout)
        rows, cols = grid_shape(width, height, self.layout)
        header = self._image_header(width, height)
        cond = [list(p) + header for p in prompts]
        batch = cond + [header] * len(cond) if settings.guided else cond
        num_steps = rows * (cols + 1) + 1  # body tokens, then <end-of-image>
        tokens = self._run(
            batch, settings, seeds, num_steps, image_shape=(rows, cols),
            start_pos=2, stop_at_separator=False, on_row=on_row, progress=progress, window=sjd_window,
        )
        grids = []
        for row_tokens in tokens:
            body = row_tokens[: rows * (cols + 1)].reshape(rows, cols + 1)[:, :cols]
            grids.append(self.layout.ids_to_codes(body))
        return grids

    @torch.inference_mode()
    def generate_text(
        self,
        prompts: Sequence[Sequence[int]],
        settings: GenerationSettings,
        seeds: Sequence[int],
        max_new_tokens: int = 512,
        image_size: tuple[int, int] = (512, 512),
        progress: bool = True,
    ) -> list[np.ndarray]:
        """Continue each prompt until the turn separator (included) or max_new_tokens.

        If the model opens an image, the engine writes an image of `image_size` (width, height)
        with the image settings and then returns to text settings. Guidance is not applied here:
        the unconditional context of an image opened mid-answer is not a prefix of the batch
        (the official chat and Omni defaults use cfg 1.0 too).
        """
        if max_new_tokens < 1:
            raise GenerationError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        check_image_size(*image_size, self.layout)
        rows, cols = grid_shape(*image_size, self.layout)
        unguided = GenerationSettings(image=settings.image, text=settings.text, cfg=1.0)
        tokens = self._run(
            [list(p) for p in prompts], unguided, seeds, max_new_tokens, image_shape=(rows, cols),
            start_pos=TEXT_MODE, stop_at_separator=True, on_row=None, progress=progress,
        )
        results = []
        for row_tokens in tokens:
            stop = np.flatnonzero(row_tokens == self.layout.separator_id)
            results.append(row_tokens[: stop[0] + 1] if len(stop) else row_tokens)
        return results

    # ------------------------------------------------------------------ the loop
    def _image_header(self, width: int, height: int) -> list[int]:
        step = self.layout.pixels_per_indicator
        sizes = self.layout.size_indicator_ids
        return [self.layout.start_image_id, sizes[height // step], sizes[width // step]]

    def _run(
        self,
        batch: list[list[int]],
        settings: GenerationSettings,
        seeds: Sequence[int],
        num_steps: int,
        image_shape: tuple[int, int],
        start_pos: int,
        stop_at_separator: bool,
        on_row: RowCallback | None,
        progress: bool,
        window: int | None = None,
    ) -> np.ndarray:
        """Prefill `batch` (conditional rows, then unconditional rows when guided) and emit
        `num_steps` tokens per conditional row. Returns (num_prompts, num_steps) ids.

        Each step emits a block of tokens per prompt at that prompt's own offset: one token for
        plain decoding, one or more with a speculative `window` (images only, start_pos >= 0)."""
        num_prompts = len(batch) // 2 if settings.guided else len(batch)
        if len(seeds) != num_prompts:
            raise GenerationError(f"need one seed per prompt: got {len(seeds)} seeds for {num_prompts} prompts")
        if num_prompts == 0:
            return np.zeros((0, num_steps), dtype=np.int64)
        lengths = [len(row) for row in batch]
        if min(lengths) == 0:
            raise GenerationError("a prompt is empty; give at least one token (the BOS of the conversation)")
        prompt_len = max(lengths)
        context = self.model.config.max_position_embeddings
        if prompt_len + num_steps > context:
            raise GenerationError(
                f"prompt ({prompt_len} tokens) plus output ({num_steps} tokens) is {prompt_len + num_steps} tokens, "
                f"beyond the model's context of {context}; shorten the prompt or ask for a smaller image"
            )
        # The last verification still writes a whole window of drafts past the accepted tokens.
        headroom = window or 0
        if prompt_len + num_steps + headroom > context:
            raise GenerationError(
                f"sjd_window {window} needs {window} cache slots beyond the prompt ({prompt_len} tokens) and the "
                f"image ({num_steps} tokens), but the model's context of {context} leaves "
                f"{context - prompt_len - num_steps}; use an sjd_window from 1 to that headroom"
            )
        max_len = prompt_len + num_steps + headroom

        device = self.device
        padded = torch.full((len(batch), prompt_len), self.layout.pad_id, dtype=torch.int64)
        for i, row in enumerate(batch):
            padded[i, prompt_len - len(row):] = torch.as_tensor(row, dtype=torch.int64)
        self.cache = self._cache_for(len(batch), max_len)
        # An image-only run samples nothing but codes: a head over the code rows skips most of lm_head.
        self._head = self._code_head() if start_pos > TEXT_MODE else None
        logits = self.model.prefill(
            padded.to(device), self.cache, torch.as_tensor(lengths, dtype=torch.int64, device=device), head=self._head
        )

        rows, cols = image_shape
        step_px = self.layout.pixels_per_indicator
        self._settings = settings
        self._image_rows, self._image_cols = rows, cols
        height_indicator = rows * self.layout.downsample // step_px
        width_indicator = cols * self.layout.downsample // step_px
        self._height_id = self.layout.size_indicator_ids[height_indicator]
        self._width_id = self.layout.size_indicator_ids[width_indicator]
        # One scale per image position up to <end-of-image>.
        scales = guidance_scales(settings, height_indicator, width_indicator, 2 + rows * (cols + 1) + 1)
        self._scales = torch.tensor(scales, dtype=torch.float32, device=device)
        self._text_possible = start_pos == TEXT_MODE
        self._start_pos, self._num_steps = start_pos, num_steps
        seed_tensor = torch.as_tensor(list(seeds), dtype=torch.int64, device=device)
        pos = torch.full((num_prompts,), start_pos, dtype=torch.int64, device=device)
        done = torch.zeros(num_prompts, dtype=torch.bool, device=device)
        # Room for a whole block written at the last offset; the part past num_steps is dropped.
        out = torch.full((num_prompts, num_steps + headroom + 1), self.layout.pad_id, dtype=torch.int64, device=device)

        next_tokens, pos, done = self._choose(logits, pos, done, seed_tensor, torch.tensor(0, device=device))
        out[:, 0] = next_tokens
        emitted = torch.ones(num_prompts, dtype=torch.int64, device=device)
        if window:
            drafts, draft_probs = uniform_drafts(
                num_prompts, window, self.layout.codebook_size,
                draft_uniforms(seed_tensor, torch.tensor(0, device=device), window),
            )
        decoded, forwards, reported_rows = 1, 0, 0  # decoded: tokens out for every prompt (host-side)
        bar = tqdm(total=num_steps, initial=1, disable=not progress, desc="decoding", unit="tok", leave=False)
        while decoded < num_steps:
            if stop_at_separator and (forwards + 1) % 16 == 0 and bool(done.all()):
                break
            step = torch.tensor(forwards + 1, device=device)
            if window:
                block, counts, next_tokens, drafts, draft_probs = self._speculative_step(
                    next_tokens, drafts, draft_probs, emitted, seed_tensor, step
                )
            else:
                fed = torch.cat([next_tokens, next_tokens]) if settings.guided else next_tokens
                next_tokens, pos, done = self._step(fed, pos, done, seed_tensor, step)
                block, counts = next_tokens[:, None], 1
            offsets = emitted[:, None] + torch.arange(block.shape[1], device=device)
            out.scatter_(1, offsets, block)  # slots past a row's count are rewritten by its next block
            emitted = emitted + counts
            forwards += 1
            # Plain decoding emits one token per row and step: no need to ask the device.
            previous, decoded = decoded, int(emitted.min()) if window else decoded + 1
            bar.update(decoded - previous)
            if on_row is not None and start_pos > TEXT_MODE:
                reported_rows = self._report_rows(out, decoded, cols, reported_rows, on_row)
        bar.close()
        self.last_stats = DecodeStats(tokens=decoded - 1, forwards=forwards)
        return out[:, :num_steps].cpu().numpy()

    def _report_rows(self, out: torch.Tensor, emitted: int, cols: int, reported: int, on_row: RowCallback) -> int:
        """Call on_row(r, codes of row r for every prompt) for each row whose <end-of-line> every
        prompt has emitted since the last call; returns the number of rows reported so far."""
        complete = min(emitted // (cols + 1), self._image_rows)
        for row in range(reported, complete):
            ids = out[:, row * (cols + 1): row * (cols + 1) + cols].cpu().numpy()
            on_row(row, self.layout.ids_to_codes(ids))
        return complete

    def _step_eager(self, fed, pos, done, seeds, step):
        logits = self.model.decode(fed[:, None], self.cache, head=self._head)[:, -1]
        return self._choose(logits, pos, done, seeds, step)

    def _cache_for(self, batch_size: int, max_len: int):
        """The engine's static cache, reused while the batch size and rounded length stay the same:
        a compiled step's CUDA graph holds the cache's addresses, so a new cache means a new graph."""
        slots = -(-max_len // CACHE_LENGTH_STEP) * CACHE_LENGTH_STEP
        cache = self.cache
        if cache is None or cache.batch_size != batch_size or cache.max_len != slots:
            cache = self.model.new_cache(batch_size, slots, device=self.device)
        return cache

    def _code_head(self) -> torch.nn.Module:
        """lm_head restricted to the image-code rows (logits in code order). One module for the engine's
        life, so that a compiled step keeps its graph; its rows are copied again on every call, so it
        follows the model's weights."""
        if self._image_head is None:
            self._image_head = self.model.sub_head(self.code_ids)
        else:
            self._image_head.weight.copy_(self.model.lm_head.weight[self.code_ids])
        return self._image_head

    def _guided_code_logits(self, logits: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
        """Image-code logits of each prompt from batch-row logits (B, ..., V), or (B, ..., C) from the code
        head: guided with `scale` (broadcast to the prompts' code logits) when CFG is on."""
        settings = self._settings
        if self._head is None:
            logits = logits[..., self.code_ids]
        num_prompts = logits.shape[0] // 2 if settings.guided else logits.shape[0]
        code_logits = logits[:num_prompts]
        if settings.guided:
            # Equal, up to a per-row constant that sampling ignores, to the official
            # log-softmax form uncond_lp + s * (cond_lp - uncond_lp).
            uncond = logits[num_prompts:]
            code_logits = uncond + scale * (code_logits - uncond)
        return code_logits

    def _structure(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For image positions `pos` (any shape): whether the model chooses a code there, and the
        structural token the engine writes otherwise (size indicators, <end-of-line>, <end-of-image>;
        positions past the image read as <end-of-image>)."""
        rows, cols = self._image_rows, self._image_cols
        body = pos - 2
        in_body = (body >= 0) & (body < rows * (cols + 1))
        structural = torch.where(in_body, self.layout.end_line_id, self.layout.end_image_id)
        structural = torch.where(pos == 1, self._width_id, structural)
        structural = torch.where(pos == 0, self._height_id, structural)
        return in_body & (body % (cols + 1) != cols), structural

    def _speculative_step_eager(self, pending, drafts, draft_probs, emitted, seeds, step):
        """One SJD forward for every prompt whose image is not finished.

        pending (P,): the last emitted token, not yet in the cache; drafts (P, L) codes with their
        distributions draft_probs (P, L, C) for output positions emitted .. emitted + L - 1;
        emitted (P,): tokens out so far. Returns the block (P, L + 1) whose first `counts` (P,)
        tokens are emitted, and the next pending token, drafts and draft distributions.
        """
        window = drafts.shape[1]
        # positions[:, j]: output index predicted by fed slot j (slot 0 is the pending token).
        positions = emitted[:, None] + torch.arange(window + 1, device=drafts.device)
        is_code, structural = self._structure(self._start_pos + positions)
        draft_ids = torch.where(is_code[:, :-1], self.code_ids[drafts], structural[:, :-1])
        fed = torch.cat([pending[:, None], draft_ids], dim=1)
        if self._settings.guided:
            fed = torch.cat([fed, fed])
        logits = self.model.decode(fed, self.cache, head=self._head)
        target = target_probs(self._guided_code_logits(logits, self._settings.cfg), self._settings.image)

        accepted = count_accepted(
            target, drafts, draft_probs, ~is_code[:, :-1], position_uniforms(seeds, positions[:, :-1], STREAM_ACCEPT)
        )
        fix_slot = accepted[:, None]
        fix_code = correction(
            target, draft_probs, accepted, position_uniforms(seeds, positions.gather(1, fix_slot), STREAM_SAMPLE)[:, 0]
        )
        fix_token = torch.where(
            is_code.gather(1, fix_slot), self.code_ids[fix_code][:, None], structural.gather(1, fix_slot)
        )
        block = torch.cat([draft_ids, draft_ids[:, :1]], dim=1).scatter(1, fix_slot, fix_token)

        # Keep the cache holding every emitted token but the new pending one; finished rows keep nothing.
        counts = torch.minimum(accepted + 1, (self._num_steps - emitted).clamp(min=0))
        unkept = window + 1 - counts
        self.cache.rollback(torch.cat([unkept, unkept]) if self._settings.guided else unkept)
        last = block.gather(1, (counts - 1).clamp(min=0)[:, None])[:, 0]
        pending = torch.where(counts > 0, last, pending)
        drafts, draft_probs = next_drafts(target, accepted, draft_uniforms(seeds, step, window))
        return block, counts, pending, drafts, draft_probs

    def _choose(self, logits, pos, done, seeds, step):
        """From the last logits of every batch row, the next token of every prompt and its new state."""
        settings = self._settings
        num_prompts = pos.shape[0]
        cond = logits[:num_prompts]
        scale = self._scales[pos.clamp(0, self._scales.shape[0] - 1)][:, None]
        code_tokens = self.code_ids[sample(self._guided_code_logits(logits, scale), settings.image, seeds, step)]
        is_code, structural = self._structure(pos)
        tokens = torch.where(is_code, code_tokens, structural)

        in_text = pos == TEXT_MODE
        if self._text_possible:
            text_tokens = sample(cond + self.text_bias, settings.text, seeds, step)
            tokens = torch.where(in_text, text_tokens, tokens)
        tokens = torch.where(done, self.layout.pad_id, tokens)

        opened = in_text & (tokens == self.layout.start_image_id)
        closed = tokens == self.layout.end_image_id
        new_pos = torch.where(closed, TEXT_MODE, torch.where(opened, 0, torch.where(in_text, TEXT_MODE, pos + 1)))
        new_done = done | (in_text & (tokens == self.layout.separator_id))
        return tokens, new_pos, new_done
