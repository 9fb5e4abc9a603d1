"""The decode loop: batched classifier-free guidance, structure-forced Uni-Rep images,
status-aware sampling and a static KV cache, around one decode step (step.py).

`Engine` prefills the prompts, builds the request's `DecodePlan` and runs `decode_step` until every
prompt has its tokens; the step itself (compiled on CUDA into one CUDA graph) holds all per-token work.
Images can also be decoded with speculative Jacobi decoding (`sjd_window`, see speculative.py): the same
loop, whose step then verifies a window of drafts in one forward and emits one or more tokens per row.
Rows accept different counts; a prompt's conditional and unconditional rows always move together, as
acceptance is decided on the guided distribution.

The guidance scale may change along the image (`GenerationSettings.cfg_schedule`): the plan holds one
scale per image position (`guidance_scales`).

Decoding may start inside an image: `generate_images(given_rows=)` continues images from given code
rows, and `generate_text` finishes an image its prompt ends inside.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from tqdm.auto import tqdm

from lumina_mgpt.errors import GenerationError
from lumina_mgpt.formats import ImageSegment, VocabLayout, check_image_size, encode_image, grid_shape, parse
from lumina_mgpt.generation.checks import check_cfg_schedule
from lumina_mgpt.generation.sampling import SamplingSettings
from lumina_mgpt.generation.step import (
    TEXT_MODE,
    StepOutput,
    decode_step,
    make_plan,
    start,
)
from lumina_mgpt.model.packing import PackedLinear, can_pack

# Cache lengths are rounded up to this, so that nearby requests share one cache (and one CUDA graph).
CACHE_LENGTH_STEP = 256
# A CPU decode step of a small model is mostly per-operation overhead, which OpenMP's thread
# synchronisation multiplies: below this many bytes of weights one thread decodes 1.4-2x faster than two
# (measured for 7M-92M models on a 2-core EPYC); a 1B bf16 model gains from two (44 vs 52 ms a step).
SINGLE_THREAD_WEIGHT_BYTES = 1 << 30


def _on_decode_threads(method):
    """Run an `Engine` method with torch's thread count set to the engine's `decode_threads`."""

    @functools.wraps(method)
    def on_threads(self, *args, **kwargs):
        previous = torch.get_num_threads()
        if self.decode_threads is None or self.decode_threads == previous:
            return method(self, *args, **kwargs)
        torch.set_num_threads(self.decode_threads)
        try:
            return method(self, *args, **kwargs)
        finally:
            torch.set_num_threads(previous)

    return on_threads
RowCallback = Callable[[int, np.ndarray], None]
# Observes every step's StepOutput (the prefill's choice first): tokens, state, logits; see Engine.
StepCallback = Callable[[StepOutput], None]
# The official v2 schedule never guides more weakly than this.
DECAY_FLOOR = 4.0


@dataclass(frozen=True, kw_only=True)
class GenerationSettings:
    """Status-aware settings: one set inside images, one for text, and the CFG scale (images only).

    They hold no model's defaults: `cfg` is required and sampling defaults to plain softmax
    (`SamplingSettings()`). A model family's defaults live in `model_folder.FAMILY_DEFAULTS`;
    `pipeline.make_settings` (and `Pipeline.settings`) fills them in.

    `cfg_schedule` "constant" guides every image code with `cfg` (official v1, and our models);
    "decay-to-4" is official Lumina-mGPT 2.0 plain decoding (see `guidance_scales`): the scale
    shrinks along the image down to 4, and a `cfg` below 4 (other than 1, no guidance) is raised to 4.
    Speculative decoding guides with the constant `cfg` under either schedule, as the official code does.
    """

    cfg: float
    image: SamplingSettings = field(default_factory=SamplingSettings)
    text: SamplingSettings = field(default_factory=SamplingSettings)
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
    """The CFG scale at image positions 0 .. positions - 1 (see `formats.unirep.forced_image_ids`).

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
    `DecodeStats` of the last call. `decode_threads` is torch's thread count while it decodes: 1 for a
    small model on CPU (see SINGLE_THREAD_WEIGHT_BYTES), None (torch's setting) otherwise; set it to choose.

    `compile_decode`: None compiles the decode step on CUDA only; True compiles it with
    mode="reduce-overhead" (on CUDA one CUDA graph per step: model decode and sampling); a dict gives
    the `torch.compile` options instead (e.g. {"backend": "aot_eager"}); False runs it eagerly. The
    step always compiles with fullgraph=True: a graph break is an error, never a silent slowdown.

    `text_bias` (V,) is added to the conditional logits of text tokens: -inf on the image-only tokens
    (codes, <end-of-line>, <end-of-image>, size indicators), which text may not contain; a caller may
    add its own preferences to it. Every entry point takes `on_step`, an observer called with each step's
    `StepOutput` (the prefill's choice, then every decode forward): the tokens emitted, the rows' state,
    the model's logits and the guided image-code logits the codes were chosen from.
    """

    def __init__(self, model: torch.nn.Module, layout: VocabLayout, compile_decode: bool | dict | None = None):
        self.model = model
        self.layout = layout
        device = next(model.parameters()).device
        self.device = device
        self.code_ids = torch.as_tensor(np.asarray(layout.code_ids), dtype=torch.int64, device=device)
        forbidden = torch.as_tensor(layout.image_code_mask(), device=device)
        forbidden[[layout.end_line_id, layout.end_image_id]] = True
        forbidden[torch.as_tensor(layout.size_indicator_ids, device=device)] = True
        if layout.pad_id not in (layout.separator_id, layout.bos_id):  # v1 may pad with its separator, v2 with BOS
            forbidden[layout.pad_id] = True  # padding is never text: a row that wrote it would read it back as input
        # <start-of-image> stays allowed in text: it switches the row to image mode.
        self.text_bias = torch.zeros(layout.vocab_size, device=device).masked_fill(forbidden, float("-inf"))
        packed = any(isinstance(module, PackedLinear) for module in model.modules())
        self._decode_step = _decode_step_for(device, compile_decode, packed)
        # A compiled step keeps its graph only while the head module stays the same one.
        self._compiled = self._decode_step is not decode_step
        weight_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
        # None: torch's own setting.
        self.decode_threads = 1 if device.type == "cpu" and weight_bytes < SINGLE_THREAD_WEIGHT_BYTES else None
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
        on_step: StepCallback | None = None,
        given_rows: Sequence[np.ndarray] | None = None,
    ) -> list[np.ndarray]:
        """Text-to-image: one (h, w) code grid per prompt.

        Each prompt is the id list of the conversation up to and including the last separator;
        the engine appends <start-of-image> and the size indicators itself. With guidance, the
        unconditional rows see only the image block, as in training's context drop.
        `sjd_window=L` decodes with speculative Jacobi decoding, L drafts verified per forward:
        the same distribution as plain decoding (not the same samples) in fewer forwards, always
        with the constant `settings.cfg` (see GenerationSettings).

        `given_rows` continues images instead of starting them: one (k, w) grid of codes per prompt, the
        same k < h for all, written as the image's first k rows (the upper panel of a dual-panel image,
        the kept rows of an image being extended); the engine decodes rows k .. h - 1, and `on_row`
        reports those. The returned grids hold the given rows too.
        """
        not_a_count = isinstance(sjd_window, bool) or not isinstance(sjd_window, int)
        if sjd_window is not None and (not_a_count or sjd_window < 1):
            raise GenerationError(
                f"sjd_window must be an integer >= 1 (draft tokens verified per forward; 16 is usual), "
                f"or None for plain decoding; got {sjd_window!r}"
            )
        check_image_size(width, height, self.layout)
        rows, cols = grid_shape(width, height, self.layout)
        given = self._check_given_rows(given_rows, len(prompts), rows, cols)
        # <start-of-image>, the size indicators of the whole image and the given rows, left open.
        blocks = [encode_image(grid, self.layout, panel_rows=rows).tolist() for grid in given]
        cond = [list(p) + block for p, block in zip(prompts, blocks)]
        batch = cond + blocks if settings.guided else cond
        kept = given.shape[1]
        num_steps = (rows - kept) * (cols + 1) + 1  # body tokens left, then <end-of-image>
        tokens = self._run(
            batch, settings, seeds, num_steps, image_shape=(rows, cols), positions=[2 + kept * (cols + 1)] * len(cond),
            on_row=on_row, progress=progress, window=sjd_window or 0, on_step=on_step,
        )
        body = tokens[:, : (rows - kept) * (cols + 1)].reshape(len(tokens), rows - kept, cols + 1)[..., :cols]
        return list(np.concatenate([given, self.layout.ids_to_codes(body)], axis=1))

    def _check_given_rows(
        self, given_rows: Sequence[np.ndarray] | None, num_prompts: int, rows: int, cols: int
    ) -> np.ndarray:
        """The given rows as one int64 array (prompts, k, cols); (prompts, 0, cols) when there are none."""
        if given_rows is None:
            return np.zeros((num_prompts, 0, cols), dtype=np.int64)
        grids = [np.asarray(grid) for grid in given_rows]
        if len(grids) != num_prompts:
            raise GenerationError(f"need one grid of given rows per prompt: got {len(grids)} for {num_prompts} prompts")
        shapes = {grid.shape for grid in grids}
        kinds_ok = all(np.issubdtype(grid.dtype, np.integer) for grid in grids)
        if len(shapes) > 1 or not kinds_ok or any(len(s) != 2 or s[1] != cols or s[0] >= rows for s in shapes):
            raise GenerationError(
                f"given_rows must be integer code grids of one shape (k, {cols}) with 0 <= k < {rows} for a "
                f"{rows}x{cols} image; got {', '.join(f'{g.dtype} {g.shape}' for g in grids)}"
            )
        return np.stack(grids).astype(np.int64)

    @torch.inference_mode()
    def generate_text(
        self,
        prompts: Sequence[Sequence[int]],
        settings: GenerationSettings,
        seeds: Sequence[int],
        max_new_tokens: int = 512,
        image_size: tuple[int, int] = (512, 512),
        progress: bool = True,
        on_step: StepCallback | None = None,
    ) -> list[np.ndarray]:
        """Continue each prompt until the turn separator (included) or max_new_tokens.

        If the model opens an image, the engine writes an image of `image_size` (width, height)
        with the image settings and then returns to text settings. A prompt may hold images, and may
        end inside one of `image_size` (cut anywhere after its <start-of-image>): the engine then
        finishes that image first. Guidance is not applied here: the unconditional context of an image
        opened mid-answer is not a prefix of the batch (the official chat and Omni defaults use cfg 1.0 too).
        """
        if max_new_tokens < 1:
            raise GenerationError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        check_image_size(*image_size, self.layout)
        image_shape = grid_shape(*image_size, self.layout)
        positions = [self._position_after(prompt, image_size, i) for i, prompt in enumerate(prompts)]
        unguided = GenerationSettings(image=settings.image, text=settings.text, cfg=1.0)
        tokens = self._run(
            [list(p) for p in prompts], unguided, seeds, max_new_tokens,
            image_shape=image_shape, positions=positions, text=True,
            on_row=None, progress=progress, window=0, on_step=on_step,
        )
        results = []
        for row_tokens in tokens:
            stop = np.flatnonzero(row_tokens == self.layout.separator_id)
            results.append(row_tokens[: stop[0] + 1] if len(stop) else row_tokens)
        return results

    def _position_after(self, prompt: Sequence[int], image_size: tuple[int, int], index: int) -> int:
        """The image position of the token after `prompt`: TEXT_MODE unless the prompt ends inside an image,
        which must be of `image_size`. UniRepError for a malformed image in the prompt."""
        segments = parse(np.asarray(prompt, dtype=np.int64), self.layout) if len(prompt) else []
        if not segments or not isinstance(segments[-1], ImageSegment) or segments[-1].complete:
            return TEXT_MODE
        image = segments[-1]
        width, height = image_size
        if (image.height and image.height != height) or (image.width and image.width != width):
            announced = f"{image.width or '?'}x{image.height}"
            raise GenerationError(
                f"prompt {index} ends inside an image of {announced} pixels, but image_size is {width}x{height}; "
                f"pass the size of the image to continue as image_size"
            )
        return image.length - 1  # positions count from the token after <start-of-image>

    # ------------------------------------------------------------------ the loop
    @_on_decode_threads
    def _run(
        self,
        batch: list[list[int]],
        settings: GenerationSettings,
        seeds: Sequence[int],
        num_steps: int,
        image_shape: tuple[int, int],
        positions: list[int],
        on_row: RowCallback | None,
        progress: bool,
        window: int,
        on_step: StepCallback | None,
        text: bool = False,
    ) -> np.ndarray:
        """Prefill `batch` (conditional rows, then unconditional rows when guided) and emit
        `num_steps` tokens per conditional row. Returns (num_prompts, num_steps) ids.

        `positions` holds each prompt's image position after its prompt (TEXT_MODE when it ends in text).
        A `text` run samples text and may open and close images; an image run samples only codes,
        through a code-only head. Each
        step emits a block of tokens per prompt at that prompt's own offset: one token for plain
        decoding, one or more with a speculative `window` (images only)."""
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
        if prompt_len + num_steps + window > context:
            raise GenerationError(
                f"sjd_window {window} needs {window} cache slots beyond the prompt ({prompt_len} tokens) and the "
                f"image ({num_steps} tokens), but the model's context of {context} leaves "
                f"{context - prompt_len - num_steps}; use an sjd_window from 1 to that headroom"
            )

        device = self.device
        padded = torch.full((len(batch), prompt_len), self.layout.pad_id, dtype=torch.int64)
        for i, row in enumerate(batch):
            padded[i, prompt_len - len(row):] = torch.as_tensor(row, dtype=torch.int64)
        self.cache = self._cache_for(len(batch), prompt_len + num_steps + window)
        # An image-only run samples nothing but codes: a head over the code rows skips most of lm_head.
        head = None if text else self._code_head()
        logits = self.model.prefill(
            padded.to(device), self.cache, torch.as_tensor(lengths, dtype=torch.int64, device=device), head=head
        )
        rows, cols = image_shape
        per_indicator = self.layout.latent_cells_per_indicator
        # SJD guides with the constant cfg under every schedule (see GenerationSettings).
        schedule = replace(settings, cfg_schedule="constant") if window else settings
        scales = guidance_scales(schedule, rows // per_indicator, cols // per_indicator, 2 + rows * (cols + 1) + 1)
        plan = make_plan(
            self.layout, image_shape, scales, guided=settings.guided, image=settings.image,
            text=settings.text if text else None, num_steps=num_steps, window=window, code_ids=self.code_ids,
            text_bias=self.text_bias if text else None, head=head,
        )
        output = start(
            plan, logits, torch.as_tensor(list(seeds), dtype=torch.int64, device=device),
            torch.as_tensor(positions, dtype=torch.int64, device=device),
        )
        if on_step is not None:
            on_step(output)
        # Room for a whole block written at the last offset; the part past num_steps is dropped.
        out = torch.full((num_prompts, num_steps + window + 1), self.layout.pad_id, dtype=torch.int64, device=device)
        out[:, 0] = output.block[:, 0]
        block_offsets = torch.arange(window + 1, device=device)
        state = output.state
        decoded, forwards, reported_rows = 1, 0, 0  # decoded: tokens out for every prompt (host-side)
        bar = tqdm(total=num_steps, initial=1, disable=not progress, desc="decoding", unit="tok", leave=False)
        while decoded < num_steps:
            if text and (forwards + 1) % 16 == 0 and bool(state.done.all()):
                break
            offsets = state.emitted[:, None] + block_offsets
            output = self._decode_step(self.model, self.cache, plan, state)
            state = output.state
            if on_step is not None:
                on_step(output)
            out.scatter_(1, offsets, output.block)  # slots past a row's count are rewritten by its next block
            forwards += 1
            # Plain decoding emits one token per row and step: no need to ask the device.
            previous, decoded = decoded, int(state.emitted.min()) if window else decoded + 1
            bar.update(decoded - previous)
            if on_row is not None and not text:
                reported_rows = self._report_rows(out, decoded, image_shape, positions[0], reported_rows, on_row)
        bar.close()
        self.last_stats = DecodeStats(tokens=decoded - 1, forwards=forwards)
        return out[:, :num_steps].cpu().numpy()

    def _report_rows(
        self, out: torch.Tensor, emitted: int, image_shape: tuple[int, int], start_pos: int, reported: int,
        on_row: RowCallback,
    ) -> int:
        """Call on_row(r, codes of row r for every prompt) for each row whose <end-of-line> every prompt
        has emitted since the last call (r counts from the image's top, `start_pos` being the image
        position of the run's first token); returns the number of rows reported so far."""
        rows, cols = image_shape
        first_row = (start_pos - 2) // (cols + 1)
        complete = min(emitted // (cols + 1), rows - first_row)
        for row in range(reported, complete):
            ids = out[:, row * (cols + 1): row * (cols + 1) + cols].cpu().numpy()
            on_row(first_row + row, self.layout.ids_to_codes(ids))
        return complete

    def _cache_for(self, batch_size: int, max_len: int):
        """The engine's static cache, reused while the batch size and rounded length stay the same:
        a compiled step's CUDA graph holds the cache's addresses, so a new cache means a new graph."""
        slots = -(-max_len // CACHE_LENGTH_STEP) * CACHE_LENGTH_STEP
        cache = self.cache
        if cache is None or cache.batch_size != batch_size or cache.max_len != slots:
            cache = self.model.new_cache(batch_size, slots, device=self.device)
        return cache

    def _code_head(self) -> torch.nn.Module:
        """lm_head restricted to the image-code rows (logits in code order), taken afresh on every call so
        that it follows the model's weights. Eager CPU runs pack it (see `model.packing`); a compiled step
        gets one module for the engine's life, its rows copied in place."""
        if not self._compiled:
            head = self.model.sub_head(self.code_ids)
            weight = head.weight
            return PackedLinear(head) if weight.device.type == "cpu" and can_pack(weight.dtype) else head
        if self._image_head is None:
            self._image_head = self.model.sub_head(self.code_ids)
        else:
            self._image_head.weight.copy_(self.model.lm_head.weight[self.code_ids])
        return self._image_head


def _decode_step_for(device: torch.device, compile_decode: bool | dict | None, packed: bool):
    """decode_step, compiled as `Engine`'s compile_decode says."""
    if compile_decode is None:
        compile_decode = device.type == "cuda"
    if not isinstance(compile_decode, (bool, dict)):
        raise GenerationError(
            f"compile_decode must be None (compile on CUDA), True, False or a dict of torch.compile options; "
            f"got {compile_decode!r}"
        )
    if compile_decode is False:
        return decode_step
    if packed:
        raise GenerationError(
            "this model's linear weights are packed for eager CPU decoding (pack_linear_weights), which "
            "torch.compile cannot lower; compile an unpacked model, or decode eagerly (compile_decode=False)"
        )
    options = {"mode": "reduce-overhead"} if compile_decode is True else compile_decode
    return torch.compile(decode_step, **{**options, "fullgraph": True})
