"""The decode loop: batched classifier-free guidance, structure-forced Uni-Rep images,
status-aware sampling, a static KV cache and one compiled decode step.

Every row carries a small state, `image_pos`: -1 while the row writes text, otherwise the index
of the next token inside the block that follows <start-of-image>:
    0: height indicator, 1: width indicator, 2 + j: body token j, 2 + h*(w+1): <end-of-image>,
where body token j is an <end-of-line> when j % (w+1) == w and an image code otherwise. The
engine writes every structural token itself; the model only chooses codes (and text). All
per-step work is tensor work on the device, so the step captures into one CUDA graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from lumina_mgpt.errors import GenerationError
from lumina_mgpt.formats import VocabLayout, check_image_size, grid_shape
from lumina_mgpt.generation.sampling import SamplingSettings, sample

TEXT_MODE = -1
RowCallback = Callable[[int, np.ndarray], None]


@dataclass(frozen=True)
class GenerationSettings:
    """Status-aware settings: one set inside images, one for text, and the CFG scale (images only)."""

    image: SamplingSettings = field(default_factory=lambda: SamplingSettings(temperature=1.0, top_k=2000))
    text: SamplingSettings = field(default_factory=lambda: SamplingSettings(temperature=1.0, top_k=10))
    cfg: float = 4.0

    def __post_init__(self):
        if not self.cfg >= 0:
            raise GenerationError(f"cfg must be >= 0 (1 means no guidance), got {self.cfg}")

    @property
    def guided(self) -> bool:
        return self.cfg != 1.0


class Engine:
    """Generates token streams from a `Transformer` that speaks a `VocabLayout`."""

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
        self._step = torch.compile(self._step_eager, mode="reduce-overhead") if compile_decode else self._step_eager

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
    ) -> list[np.ndarray]:
        """Text-to-image: one (h, w) code grid per prompt.

        Each prompt is the id list of the conversation up to and including the last separator;
        the engine appends <start-of-image> and the size indicators itself. With guidance, the
        unconditional rows see only the image block, as in training's context drop.
        """
        check_image_size(width, height, self.layout)
        rows, cols = grid_shape(width, height, self.layout)
        header = self._image_header(width, height)
        cond = [list(p) + header for p in prompts]
        batch = cond + [header] * len(cond) if settings.guided else cond
        num_steps = rows * (cols + 1) + 1  # body tokens, then <end-of-image>
        tokens = self._run(
            batch, settings, seeds, num_steps, image_shape=(rows, cols),
            start_pos=2, stop_at_separator=False, on_row=on_row, progress=progress,
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
    ) -> np.ndarray:
        """Prefill `batch` (conditional rows, then unconditional rows when guided) and emit
        `num_steps` tokens per conditional row. Returns (num_prompts, num_steps) ids."""
        num_prompts = len(batch) // 2 if settings.guided else len(batch)
        if len(seeds) != num_prompts:
            raise GenerationError(f"need one seed per prompt: got {len(seeds)} seeds for {num_prompts} prompts")
        if num_prompts == 0:
            return np.zeros((0, num_steps), dtype=np.int64)
        lengths = [len(row) for row in batch]
        if min(lengths) == 0:
            raise GenerationError("a prompt is empty; give at least one token (the BOS of the conversation)")
        prompt_len = max(lengths)
        max_len = prompt_len + num_steps
        context = self.model.config.max_position_embeddings
        if max_len > context:
            raise GenerationError(
                f"prompt ({prompt_len} tokens) plus output ({num_steps} tokens) is {max_len} tokens, beyond the "
                f"model's context of {context}; shorten the prompt or ask for a smaller image"
            )

        device = self.device
        padded = torch.full((len(batch), prompt_len), self.layout.pad_id, dtype=torch.int64)
        for i, row in enumerate(batch):
            padded[i, prompt_len - len(row):] = torch.as_tensor(row, dtype=torch.int64)
        self.cache = self.model.new_cache(len(batch), max_len, device=device)
        logits = self.model.prefill(
            padded.to(device), self.cache, torch.as_tensor(lengths, dtype=torch.int64, device=device)
        )

        rows, cols = image_shape
        step_px = self.layout.pixels_per_indicator
        self._settings = settings
        self._image_rows, self._image_cols = rows, cols
        self._height_id = self.layout.size_indicator_ids[rows * self.layout.downsample // step_px]
        self._width_id = self.layout.size_indicator_ids[cols * self.layout.downsample // step_px]
        self._text_possible = start_pos == TEXT_MODE
        seed_tensor = torch.as_tensor(list(seeds), dtype=torch.int64, device=device)
        pos = torch.full((num_prompts,), start_pos, dtype=torch.int64, device=device)
        done = torch.zeros(num_prompts, dtype=torch.bool, device=device)
        out = torch.full((num_prompts, num_steps), self.layout.pad_id, dtype=torch.int64, device=device)

        next_tokens, pos, done = self._choose(logits, pos, done, seed_tensor, torch.tensor(0, device=device))
        out[:, 0] = next_tokens
        for step in tqdm(range(1, num_steps), disable=not progress, desc="decoding", unit="tok", leave=False):
            if on_row is not None and start_pos > TEXT_MODE:
                self._report_row(out, step, cols, on_row)
            if stop_at_separator and step % 16 == 0 and bool(done.all()):
                break
            fed = torch.cat([next_tokens, next_tokens]) if settings.guided else next_tokens
            next_tokens, pos, done = self._step(fed, pos, done, seed_tensor, torch.tensor(step, device=device))
            out[:, step] = next_tokens
        if on_row is not None and start_pos > TEXT_MODE:
            self._report_row(out, num_steps, cols, on_row)
        return out.cpu().numpy()

    def _report_row(self, out: torch.Tensor, emitted: int, cols: int, on_row: RowCallback) -> None:
        """Call on_row(r, codes of row r for every prompt) once the row's <end-of-line> is out."""
        if emitted % (cols + 1) == 0 and emitted > 0:
            row = emitted // (cols + 1) - 1
            ids = out[:, row * (cols + 1): row * (cols + 1) + cols].cpu().numpy()
            on_row(row, self.layout.ids_to_codes(ids))

    def _step_eager(self, fed, pos, done, seeds, step):
        logits = self.model.decode(fed[:, None], self.cache)[:, -1]
        return self._choose(logits, pos, done, seeds, step)

    def _choose(self, logits, pos, done, seeds, step):
        """From the last logits of every batch row, the next token of every prompt and its new state."""
        settings = self._settings
        rows, cols = self._image_rows, self._image_cols
        num_prompts = pos.shape[0]
        cond = logits[:num_prompts]

        code_logits = cond[:, self.code_ids]
        if settings.guided:
            # Equal, up to a per-row constant that sampling ignores, to the official
            # log-softmax form uncond_lp + s * (cond_lp - uncond_lp).
            uncond = logits[num_prompts:][:, self.code_ids]
            code_logits = uncond + settings.cfg * (code_logits - uncond)
        code_tokens = self.code_ids[sample(code_logits, settings.image, seeds, step)]

        body = pos - 2
        in_body = (body >= 0) & (body < rows * (cols + 1))
        structural = torch.where(in_body, self.layout.end_line_id, self.layout.end_image_id)
        structural = torch.where(pos == 1, self._width_id, structural)
        structural = torch.where(pos == 0, self._height_id, structural)
        tokens = torch.where(in_body & (body % (cols + 1) != cols), code_tokens, structural)

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
