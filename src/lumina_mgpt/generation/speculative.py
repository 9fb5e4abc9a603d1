"""Speculative Jacobi decoding (SJD; Teng et al., ICLR 2025): the probability rules of one step.

One SJD step feeds the pending token and a window of L draft tokens through the model at once; the
logits give the target distribution p at each of the L + 1 positions that follow. Drafts are verified
left to right, draft x drawn from q passing with probability min(1, p(x) / q(x)). At the first failure
a replacement is drawn from normalize(max(0, p - q)); when all L pass, a bonus token is drawn from p
at the last position. This is the speculative-sampling rule, so each emitted token is an exact draw
from p given the tokens before it, whatever the drafts were: SJD samples the same distribution as
plain decoding and only changes how many forwards it takes.

The drafts of the next step come from this one (the Jacobi part): positions this step computed a p
for but did not emit are redrawn from that p, which becomes their q; positions new to the window
are drawn uniformly from the codebook, with q uniform. (Calling the uniform draft's q one-hot, as
the paper does, is also exact, but passes a draft with probability p(x) instead of
min(1, p(x) * codebook_size).)

Randomness is counter-based (see sampling.py). Each output position is decided once, so the
acceptance test and the replacement draw are keyed by the position; drafts are keyed by the step.
Neither depends on which other rows share the batch.
"""

from __future__ import annotations

import torch

from lumina_mgpt.generation.sampling import STREAM_DRAFT, SamplingSettings, filter_logits, uniforms

DEFAULT_WINDOW = 16


def target_probs(logits: torch.Tensor, settings: SamplingSettings) -> torch.Tensor:
    """The distribution plain decoding samples from, for logits (..., n): the softmax of the
    temperature/top-k/top-p filtered logits, or a one-hot argmax when greedy."""
    if settings.greedy:
        return torch.zeros_like(logits).scatter_(-1, logits.argmax(dim=-1, keepdim=True), 1.0)
    return filter_logits(logits, settings).softmax(dim=-1)


def draw(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw of one index per row from non-negative weights (..., n), not necessarily
    normalized, with uniforms u (...) in (0, 1). Zero-weight entries are never drawn."""
    cumulative = weights.cumsum(dim=-1)
    threshold = u * cumulative[..., -1]
    index = torch.searchsorted(cumulative, threshold[..., None]).squeeze(-1)
    return index.clamp(max=weights.shape[-1] - 1)  # guards a threshold rounded above the total


def position_uniforms(seeds: torch.Tensor, positions: torch.Tensor, stream: int) -> torch.Tensor:
    """One uniform per (row, output position): seeds (P,), positions (P, k) -> (P, k)."""
    count = positions.shape[1]
    flat = uniforms(seeds[:, None].expand(-1, count).reshape(-1), positions.reshape(-1), stream, 1)
    return flat.view(-1, count)


def draft_uniforms(seeds: torch.Tensor, step: torch.Tensor, window: int) -> torch.Tensor:
    """The uniforms that draw step `step`'s window of drafts, (P, L)."""
    return uniforms(seeds, step, STREAM_DRAFT, window)


def uniform_drafts(
    num_rows: int, window: int, codebook_size: int, u: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """A window of drafts drawn uniformly from the codebook with uniforms u (P, L): codes (P, L) and q (P, L, C)."""
    probs = torch.full((num_rows, window, codebook_size), 1.0 / codebook_size, device=u.device)
    return draw(probs, u), probs


def count_accepted(
    target: torch.Tensor, drafts: torch.Tensor, draft_probs: torch.Tensor, forced: torch.Tensor, u: torch.Tensor
) -> torch.Tensor:
    """How many leading drafts pass, per row.

    target (P, L + 1, C): p at the positions of the drafts and one beyond; drafts (P, L) code indices
    drawn from draft_probs (P, L, C); forced (P, L): structural positions, which always pass (their
    token is certain under p and q alike); u (P, L): acceptance uniforms. Returns (P,) in [0, L].
    """
    p = target[:, :-1].gather(-1, drafts[..., None]).squeeze(-1)
    q = draft_probs.gather(-1, drafts[..., None]).squeeze(-1)
    passed = forced | (u * q < p)  # u < p / q without dividing by a zero q
    return passed.long().cumprod(dim=-1).sum(dim=-1)


def correction(
    target: torch.Tensor, draft_probs: torch.Tensor, accepted: torch.Tensor, u: torch.Tensor
) -> torch.Tensor:
    """The code that follows the accepted drafts, per row: drawn from max(0, p - q) at the rejected
    position, or from p beyond a fully accepted window. Shapes as in `count_accepted`; u (P,)."""
    num_rows, _, codebook_size = target.shape
    slot = accepted[:, None, None].expand(num_rows, 1, codebook_size)
    p = target.gather(1, slot).squeeze(1)
    beyond_window = torch.zeros_like(draft_probs[:, :1])
    q = torch.cat([draft_probs, beyond_window], dim=1).gather(1, slot).squeeze(1)
    residual = (p - q).clamp(min=0)
    # p == q leaves no residual, but then the draft passed surely; this only guards rounding.
    residual = torch.where(residual.sum(dim=-1, keepdim=True) > 0, residual, p)
    return draw(residual, u)


def next_drafts(target: torch.Tensor, accepted: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drafts for the window after this step's accepted drafts and correction, with their q.

    Slot j of the next window is slot accepted + 1 + j of this step's target: where that exists,
    the draft is redrawn from it; the slots beyond are new and drawn uniformly. u (P, L).
    """
    num_rows, slots, codebook_size = target.shape
    window = slots - 1
    source = accepted[:, None] + 1 + torch.arange(window, device=target.device)
    carried = source <= window
    index = source.clamp(max=window)[..., None].expand(num_rows, window, codebook_size)
    probs = torch.where(carried[..., None], target.gather(1, index), 1.0 / codebook_size)
    return draw(probs, u), probs
