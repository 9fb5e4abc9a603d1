"""Sampling on the device: temperature, top-k, top-p and a counter-based random source.

Randomness comes from a hash of (row seed, step, stream, index) rather than from a stateful
generator, so that
- a row's samples depend only on its own seed and step, never on which other rows share the
  batch (batched prompts give the same images as one prompt at a time),
- the decode step holds no generator state and captures into a CUDA graph,
- speculative decoding can draw the same uniforms again for the same position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lumina_mgpt.errors import GenerationError

_MASK32 = 0xFFFFFFFF

# Independent streams of uniforms for one (row, step): sampling noise, acceptance tests, drafts.
STREAM_SAMPLE = 0
STREAM_ACCEPT = 1
STREAM_DRAFT = 2


@dataclass(frozen=True)
class SamplingSettings:
    """How to pick the next token. temperature 0 means greedy; top_k 0 means no top-k limit."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if not self.temperature >= 0:
            raise GenerationError(f"temperature must be >= 0 (0 means greedy), got {self.temperature}")
        if self.top_k < 0:
            raise GenerationError(f"top_k must be >= 1, or 0 for no limit; got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise GenerationError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _mul32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """(x * constant) mod 2**32 for x < 2**32, without int64 overflow (products stay below 2**48)."""
    low = x * (constant & 0xFFFF)
    high = ((x * (constant >> 16)) & 0xFFFF) << 16
    return (low + high) & _MASK32


def _fmix32(x: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finalizer: a bijection that mixes every input bit into every output bit."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x85EBCA6B)
    x = x ^ (x >> 13)
    x = _mul32(x, 0xC2B2AE35)
    return x ^ (x >> 16)


def uniforms(seeds: torch.Tensor, steps: torch.Tensor, stream: int, count: int) -> torch.Tensor:
    """Uniforms in (0, 1), shape (rows, count), a pure function of (seed, step, stream, index).

    seeds and steps are int64 tensors of shape (rows,) (or broadcastable); count is static.
    """
    device = seeds.device
    row_key = _fmix32((_fmix32(seeds & _MASK32) ^ (seeds >> 32)) & _MASK32)
    row_key = _fmix32(row_key ^ _mul32(steps & _MASK32, 0x9E3779B1) ^ ((stream * 0x632BE5AB) & _MASK32))
    index = torch.arange(count, device=device, dtype=torch.int64)
    bits = _fmix32(_fmix32(row_key[:, None] ^ index[None, :]) ^ 0x5BD1E995)
    # 24 high bits fit a float32 mantissa exactly; +0.5 keeps 0 and 1 out.
    return ((bits >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))


def filter_logits(logits: torch.Tensor, settings: SamplingSettings) -> torch.Tensor:
    """Apply temperature, top-k and top-p to float32 logits (rows, n); removed entries become -inf."""
    logits = logits / max(settings.temperature, 1e-6)
    n = logits.shape[-1]
    if 0 < settings.top_k < n:
        kth = torch.topk(logits, settings.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if settings.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Keep a token if the mass before it is below top_p (the first token is always kept).
        remove_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= settings.top_p
        remove = remove_sorted.scatter(-1, order, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    return logits


def sample(
    logits: torch.Tensor,
    settings: SamplingSettings,
    seeds: torch.Tensor,
    steps: torch.Tensor,
    stream: int = STREAM_SAMPLE,
) -> torch.Tensor:
    """Sample one index per row from float32 logits (rows, n) with the Gumbel-max trick.

    argmax(logits + Gumbel noise) is an exact draw from softmax(logits), and with counter-based
    uniforms it is reproducible per row.
    """
    if settings.greedy:
        return logits.argmax(dim=-1)
    filtered = filter_logits(logits, settings)
    gumbel = -torch.log(-torch.log(uniforms(seeds, steps, stream, logits.shape[-1])))
    return (filtered + gumbel).argmax(dim=-1)
