"""One decode step, shared by plain decoding and speculative Jacobi decoding (SJD), and the state it carries.

A request becomes a `DecodePlan` once: its constants (the tokens the Uni-Rep grammar forces at each image
position, the guidance scale at each position, the sampling settings, the head). Every prompt then carries
a `RowState` of tensors: the pending token, its image position (TEXT_MODE while it writes text), the tokens
emitted, whether it finished its turn, its seed, the forward counter and, with SJD, its drafts.

`decode_step(model, cache, plan, state)` feeds each prompt's pending token (and with SJD its window of
drafts) through the model, chooses from the logits and returns the new state and the tokens emitted. It
keeps nothing on any object and never syncs with the host; its only side effect is on the static KV cache
(appended, and with SJD rolled back), so it compiles into one graph (one CUDA graph on CUDA).

Image positions: 0 height indicator, 1 width indicator, 2 + j body token j, then <end-of-image>
(see `formats.unirep.forced_image_ids`). The engine writes every forced token itself; the model only
chooses codes (and text). With guidance the batch holds the conditional rows, then one unconditional
row per prompt; a prompt's two rows always move together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from lumina_mgpt.formats import VocabLayout
from lumina_mgpt.formats.unirep import FREE_CODE, forced_image_ids
from lumina_mgpt.generation.sampling import (
    STREAM_ACCEPT,
    STREAM_SAMPLE,
    SamplingSettings,
    sample,
)
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


@dataclass(frozen=True, eq=False)
class DecodePlan:
    """The constants of one request, built once by `make_plan`.

    `forced[n]` is the id the grammar forces at image position n (FREE_CODE where a code is chosen) and
    `scales[n]` the guidance scale there; positions past the image read as the last entry (<end-of-image>).
    `text` is None for image-only runs, whose logits then come from `head` (the image-code rows of lm_head)."""

    window: int  # SJD drafts verified per forward; 0 for plain decoding
    guided: bool
    image: SamplingSettings
    text: SamplingSettings | None
    num_steps: int  # tokens to emit per prompt
    forced: torch.Tensor  # (positions,) int64
    scales: torch.Tensor  # (positions,) float32
    code_ids: torch.Tensor  # (C,) vocabulary id of each image code
    text_bias: torch.Tensor | None  # (V,) added to text logits
    head: torch.nn.Module | None
    pad_id: int
    start_image_id: int
    end_image_id: int
    separator_id: int

    @property
    def last_position(self) -> int:
        return self.forced.shape[0] - 1


def make_plan(
    layout: VocabLayout,
    image_shape: tuple[int, int],
    scales: list[float],
    guided: bool,
    image: SamplingSettings,
    text: SamplingSettings | None,
    num_steps: int,
    window: int,
    code_ids: torch.Tensor,
    text_bias: torch.Tensor | None,
    head: torch.nn.Module | None,
) -> DecodePlan:
    """The plan of a request whose images are `image_shape` (rows, cols) latent grids, guided with `scales`
    (one per image position, see `forced_image_ids`)."""
    device = code_ids.device
    return DecodePlan(
        window=window,
        guided=guided,
        image=image,
        text=text,
        num_steps=num_steps,
        forced=torch.as_tensor(forced_image_ids(*image_shape, layout), device=device),
        scales=torch.tensor(scales, dtype=torch.float32, device=device),
        code_ids=code_ids,
        text_bias=text_bias,
        head=head,
        pad_id=layout.pad_id,
        start_image_id=layout.start_image_id,
        end_image_id=layout.end_image_id,
        separator_id=layout.separator_id,
    )


class RowState(NamedTuple):
    """What each prompt carries from step to step; P prompts, L = plan.window, C codes."""

    pending: torch.Tensor  # (P,) the last emitted token, not yet in the cache
    pos: torch.Tensor  # (P,) image position of the next token; TEXT_MODE in text
    emitted: torch.Tensor  # (P,) tokens emitted so far
    done: torch.Tensor  # (P,) bool: the prompt wrote its turn's separator (text runs)
    seeds: torch.Tensor  # (P,) int64, the key of every random draw of the row
    step: torch.Tensor  # () int64: decode forwards run so far (0: the prefill)
    drafts: torch.Tensor  # (P, L) SJD draft codes
    draft_probs: torch.Tensor  # (P, L, C) the distributions they were drawn from


class StepOutput(NamedTuple):
    """A step's result: the new state, `block` (P, k) whose first `counts` (P,) tokens were emitted, the
    model's logits for every batch row (B, k, V), or (B, k, C) from a code head, and the guided image-code
    logits each prompt's codes were chosen from (P, k, C)."""

    state: RowState
    block: torch.Tensor
    counts: torch.Tensor
    logits: torch.Tensor
    guided: torch.Tensor


def grammar(plan: DecodePlan, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For image positions `pos` (any shape): whether the model chooses a code there, and the forced id."""
    forced = plan.forced[pos.clamp(0, plan.last_position)]
    return forced == FREE_CODE, forced


def guided_code_logits(plan: DecodePlan, logits: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Each prompt's image-code logits (P, k, C) from the batch rows' logits (B, k, V or C), guided with
    the scale of image positions `pos` (P, k) when CFG is on."""
    if plan.head is None:
        logits = logits[..., plan.code_ids]
    if not plan.guided:
        return logits
    num_prompts = logits.shape[0] // 2
    cond, uncond = logits[:num_prompts], logits[num_prompts:]
    scale = plan.scales[pos.clamp(0, plan.last_position)][..., None]
    # Equal, up to a per-row constant that sampling ignores, to the official
    # log-softmax form uncond_lp + s * (cond_lp - uncond_lp).
    return uncond + scale * (cond - uncond)


def choose(plan: DecodePlan, logits: torch.Tensor, state: RowState) -> tuple[torch.Tensor, RowState, torch.Tensor]:
    """Plain decoding: from the batch rows' last logits (B, 1, V or C), each prompt's next token, its new
    state and the guided code logits (P, 1, C). Randomness is keyed by (seed, state.step)."""
    pos, done = state.pos, state.done
    guided = guided_code_logits(plan, logits, pos[:, None])
    code_tokens = plan.code_ids[sample(guided[:, 0], plan.image, state.seeds, state.step)]
    is_code, forced = grammar(plan, pos)
    tokens = torch.where(is_code, code_tokens, forced)
    in_text = pos == TEXT_MODE
    if plan.text is not None:
        cond = logits[: pos.shape[0], 0]
        tokens = torch.where(in_text, sample(cond + plan.text_bias, plan.text, state.seeds, state.step), tokens)
    tokens = torch.where(done, plan.pad_id, tokens)

    opened = in_text & (tokens == plan.start_image_id)
    closed = tokens == plan.end_image_id
    new_pos = torch.where(closed, TEXT_MODE, torch.where(opened, 0, torch.where(in_text, TEXT_MODE, pos + 1)))
    new_state = state._replace(
        pending=tokens,
        pos=new_pos,
        emitted=state.emitted + 1,
        done=done | (in_text & (tokens == plan.separator_id)),
    )
    return tokens, new_state, guided


def verify(
    plan: DecodePlan, logits: torch.Tensor, state: RowState, fed: torch.Tensor, is_code: torch.Tensor,
    forced: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, RowState, torch.Tensor]:
    """SJD: from the logits (B, L + 1, C) of the pending token and the drafts `fed` (P, L + 1), whose
    positions the grammar describes by `is_code` and `forced` (P, L + 1), the emitted block (P, L + 1),
    counts (P,), the new state and the guided code logits. Acceptance and the correction are keyed by
    output position (tokens emitted before), the next drafts by the step."""
    window = plan.window
    offsets = torch.arange(window + 1, device=fed.device)
    positions = state.emitted[:, None] + offsets
    guided = guided_code_logits(plan, logits, state.pos[:, None] + offsets)
    target = target_probs(guided, plan.image)
    accepted = count_accepted(
        target, state.drafts, state.draft_probs, ~is_code[:, :-1],
        position_uniforms(state.seeds, positions[:, :-1], STREAM_ACCEPT),
    )
    fix_slot = accepted[:, None]
    fix_code = correction(
        target, state.draft_probs, accepted,
        position_uniforms(state.seeds, positions.gather(1, fix_slot), STREAM_SAMPLE)[:, 0],
    )
    fix_token = torch.where(is_code.gather(1, fix_slot), plan.code_ids[fix_code][:, None], forced.gather(1, fix_slot))
    draft_ids = fed[:, 1:]
    block = torch.cat([draft_ids, draft_ids[:, :1]], dim=1).scatter(1, fix_slot, fix_token)
    # Rows past the end of their image emit nothing.
    counts = torch.minimum(accepted + 1, (plan.num_steps - state.emitted).clamp(min=0))
    last = block.gather(1, (counts - 1).clamp(min=0)[:, None])[:, 0]
    drafts, draft_probs = next_drafts(target, accepted, draft_uniforms(state.seeds, state.step, window))
    new_state = state._replace(
        pending=torch.where(counts > 0, last, state.pending),
        pos=state.pos + counts,
        emitted=state.emitted + counts,
        drafts=drafts,
        draft_probs=draft_probs,
    )
    return block, counts, new_state, guided


def decode_step(model: torch.nn.Module, cache, plan: DecodePlan, state: RowState) -> StepOutput:
    """One decode forward for every prompt: plain decoding emits one token per prompt, SJD (plan.window
    = L) verifies L drafts and emits 1 to L + 1. The cache holds every emitted token but the pending ones."""
    state = state._replace(step=state.step + 1)
    if plan.window:
        offsets = torch.arange(plan.window + 1, device=state.pos.device)
        is_code, forced = grammar(plan, state.pos[:, None] + offsets)
        draft_ids = torch.where(is_code[:, :-1], plan.code_ids[state.drafts], forced[:, :-1])
        fed = torch.cat([state.pending[:, None], draft_ids], dim=1)
    else:
        fed = state.pending[:, None]
    logits = model.decode(torch.cat([fed, fed]) if plan.guided else fed, cache, head=plan.head)
    if not plan.window:
        tokens, state, guided = choose(plan, logits, state)
        return StepOutput(state, tokens[:, None], torch.ones_like(tokens), logits, guided)
    block, counts, state, guided = verify(plan, logits, state, fed, is_code, forced)
    # Keep in the cache every emitted token but the new pending one; finished rows keep nothing.
    unkept = plan.window + 1 - counts
    cache.rollback(torch.cat([unkept, unkept]) if plan.guided else unkept)
    return StepOutput(state, block, counts, logits, guided)


def start(plan: DecodePlan, prefill_logits: torch.Tensor, seeds: torch.Tensor, positions: torch.Tensor) -> StepOutput:
    """The first token of every prompt from the prefill's last logits (B, V or C), and the initial state
    (with SJD, a window of drafts drawn uniformly from the codebook). `positions` (P,) int64: each
    prompt's image position after its prompt, TEXT_MODE for a prompt that ends in text."""
    num_prompts, device = seeds.shape[0], seeds.device
    codebook_size = plan.code_ids.shape[0]
    step = torch.tensor(0, dtype=torch.int64, device=device)
    if plan.window:
        drafts, draft_probs = uniform_drafts(
            num_prompts, plan.window, codebook_size, draft_uniforms(seeds, step, plan.window)
        )
    else:
        drafts = torch.zeros((num_prompts, 0), dtype=torch.int64, device=device)
        draft_probs = torch.zeros((num_prompts, 0, codebook_size), device=device)
    state = RowState(
        pending=torch.full((num_prompts,), plan.pad_id, dtype=torch.int64, device=device),
        pos=positions,
        emitted=torch.zeros(num_prompts, dtype=torch.int64, device=device),
        done=torch.zeros(num_prompts, dtype=torch.bool, device=device),
        seeds=seeds,
        step=step,
        drafts=drafts,
        draft_probs=draft_probs,
    )
    logits = prefill_logits[:, None]
    tokens, state, guided = choose(plan, logits, state)
    return StepOutput(state, tokens[:, None], torch.ones_like(tokens), logits, guided)
