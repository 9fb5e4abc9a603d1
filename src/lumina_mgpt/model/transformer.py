"""The Chameleon-architecture decoder used by Lumina-mGPT 1 and 2.

Parameter names mirror HF `ChameleonForConditionalGeneration`, so official safetensors load without
renaming. Three entry points share one trunk: `forward` (training, full causal attention),
`prefill` and `decode` (generation through a static `KVCache`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from lumina_mgpt.errors import CheckpointError
from lumina_mgpt.model.cache import KVCache
from lumina_mgpt.model.config import ModelConfig

IGNORE_INDEX = -100
# The official QK-norm hard-codes this epsilon, independent of rms_norm_eps.
QK_NORM_EPS = 1e-5


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32, cast back before the weight (as Chameleon does)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


class HeadNorm(nn.Module):
    """QK-norm: LayerNorm over head_dim without affine, then a per-head weight and bias.

    Weight and bias are stored as (rows, head_dim) and repeat-interleaved so that each row serves
    num_heads // rows consecutive heads (rows = model-parallel ranks, or one per head).
    """

    def __init__(self, rows: int, num_heads: int, head_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(rows, head_dim))
        self.bias = nn.Parameter(torch.zeros(rows, head_dim))
        self.heads_per_row = num_heads // rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, seq, heads, head_dim)."""
        x = F.layer_norm(x, x.shape[-1:], eps=QK_NORM_EPS)
        weight = self.weight.repeat_interleave(self.heads_per_row, dim=0)
        bias = self.bias.repeat_interleave(self.heads_per_row, dim=0)
        return x * weight + bias


def rotary_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin for rotate-half RoPE at `positions` (B, T), shaped (B, 1, T, head_dim), fp32 math."""
    exponents = torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim
    inv_freq = 1.0 / (theta**exponents)
    freqs = positions[..., None].float() * inv_freq
    angles = torch.cat((freqs, freqs), dim=-1)[:, None]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE on (B, heads, T, head_dim)."""
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-second, first), dim=-1) * sin


class Attention(nn.Module):
    """GQA self-attention with QK-norm; reads and writes a cache layer when one is given."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, config.head_dim
        kv_width = config.num_kv_heads * config.head_dim
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, kv_width, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, kv_width, bias=False)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.q_norm = HeadNorm(config.qk_norm_rows, config.num_heads, config.head_dim)
        self.k_norm = HeadNorm(config.k_norm_rows, config.num_kv_heads, config.head_dim)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cached: tuple[torch.Tensor, torch.Tensor] | None,
        attend: AttendPlan | None,
    ) -> torch.Tensor:
        batch, seq, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(batch, seq, self.num_heads, self.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(batch, seq, self.num_kv_heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        grouped = self.num_kv_heads != self.num_heads
        if cached is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=grouped)
        else:
            keys, values = cached
            index = attend.slots[:, None, :, None].expand(batch, self.num_kv_heads, seq, self.head_dim)
            keys.scatter_(2, index, k.to(keys.dtype))
            values.scatter_(2, index, v.to(values.dtype))
            # Attention runs in the cache's dtype (see `Transformer.new_cache`).
            out = F.scaled_dot_product_attention(
                q.to(keys.dtype),
                keys[:, :, : attend.kv_len],
                values[:, :, : attend.kv_len],
                attn_mask=attend.mask,
                enable_gqa=grouped,
            ).to(x.dtype)
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, -1))


class MLP(nn.Module):
    """SwiGLU feed-forward."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """Pre-norm block, or with `swin_norm` the norm applied to each branch's output (Chameleon 34B)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.self_attn = Attention(config)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.residual_dropout = nn.Dropout(config.dropout)
        self.swin_norm = config.swin_norm

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cached: tuple[torch.Tensor, torch.Tensor] | None = None,
        attend: AttendPlan | None = None,
    ) -> torch.Tensor:
        if self.swin_norm:
            x = x + self.residual_dropout(self.input_layernorm(self.self_attn(x, cos, sin, cached, attend)))
            return x + self.residual_dropout(self.post_attention_layernorm(self.mlp(x)))
        x = x + self.residual_dropout(self.self_attn(self.input_layernorm(x), cos, sin, cached, attend))
        return x + self.residual_dropout(self.mlp(self.post_attention_layernorm(x)))


@dataclass
class AttendPlan:
    """Where a cached forward writes its keys/values and what each query may see."""

    slots: torch.Tensor  # (B, T) cache slot of each new token
    mask: torch.Tensor  # (B, 1, T, kv_len) bool, True = may attend
    kv_len: int  # cache slots visible to the attention


class Decoder(nn.Module):
    """Embedding, blocks and final norm (HF's `model.*`)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.head_dim, self.rope_theta = config.head_dim, config.rope_theta

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        cache: KVCache | None = None,
        attend: AttendPlan | None = None,
    ) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        cos, sin = rotary_cos_sin(positions, self.head_dim, self.rope_theta, x.dtype)
        for index, layer in enumerate(self.layers):
            cached = None if cache is None else (cache.keys[index], cache.values[index])
            x = layer(x, cos, sin, cached, attend)
        return self.norm(x)


@dataclass
class LossOutput:
    """Training loss: `loss` = `ce_loss` + z_loss_weight * `z_loss`, all means over `num_tokens`."""

    loss: torch.Tensor
    ce_loss: torch.Tensor
    z_loss: torch.Tensor
    num_tokens: torch.Tensor


class Transformer(nn.Module):
    """Decoder-only transformer with an untied LM head; logits are returned in fp32."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = Decoder(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if not self.lm_head.weight.is_meta:  # meta init (checkpoint loading) skips the slow no-op
            self.init_weights()

    @torch.no_grad()
    def init_weights(self, std: float = 0.02) -> None:
        """Fresh weights: normal(0, std) matrices, unit norm weights, zero QK-norm biases."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, (RMSNorm, HeadNorm)):
                nn.init.ones_(module.weight)
                if isinstance(module, HeadNorm):
                    nn.init.zeros_(module.bias)

    def forward(
        self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, z_loss_weight: float = 0.0
    ) -> torch.Tensor | LossOutput:
        """Full causal forward over (B, T) ids.

        Without labels: logits (B, T, V) fp32. With labels (B, T), HF convention: `labels` is aligned
        with `input_ids` and shifted here, so position t's logits are scored against labels[:, t + 1];
        -100 marks positions that are not supervised.
        """
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
        logits = self.lm_head(self.model(input_ids, positions)).float()
        if labels is None:
            return logits
        if labels.shape != input_ids.shape:
            raise CheckpointError(
                f"labels shape {tuple(labels.shape)} differs from input_ids shape {tuple(input_ids.shape)}; "
                "labels must be aligned with input_ids (they are shifted inside)"
            )
        targets = labels[:, 1:]
        supervised = targets != IGNORE_INDEX
        scored = logits[:, :-1][supervised]
        num_tokens = supervised.sum()
        denominator = num_tokens.clamp(min=1)
        ce_loss = F.cross_entropy(scored, targets[supervised], reduction="sum") / denominator
        z_loss = torch.logsumexp(scored, dim=-1).pow(2).sum() / denominator
        return LossOutput(ce_loss + z_loss_weight * z_loss, ce_loss, z_loss, num_tokens)

    def new_cache(
        self, batch_size: int, max_len: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> KVCache:
        """A zeroed static cache, on the model's device by default. Attention runs in the cache's dtype,
        by default the model's on accelerators and float32 on CPU: there bf16 / fp16 attention kernels
        are several times slower at decode shapes (one query over a few hundred keys: 0.7 ms vs 0.09 ms
        per layer for 2 x 16 heads x 256 slots on a 2-core EPYC), and the stored keys are exact either way."""
        weight = self.lm_head.weight
        device = torch.device(weight.device if device is None else device)
        if dtype is None:
            dtype = torch.float32 if device.type == "cpu" else weight.dtype
        return KVCache(
            self.config.num_layers,
            batch_size,
            self.config.num_kv_heads,
            max_len,
            self.config.head_dim,
            device=device,
            dtype=dtype,
        )

    def prefill(
        self, input_ids: torch.Tensor, cache: KVCache, prompt_lengths: torch.Tensor, head: nn.Module | None = None
    ) -> torch.Tensor:
        """Run LEFT-padded prompts (B, T) into an empty cache; returns the last position's logits (B, V) fp32.

        Row b's real tokens are the last prompt_lengths[b] ids; they get positions 0.. and the pad slots
        before them are never attended. Resets the cache pointers to T. `head` replaces lm_head, e.g. by
        one holding only the image-code rows when only those logits are needed.
        """
        batch, seq = input_ids.shape
        if batch != cache.batch_size or seq > cache.max_len or prompt_lengths.shape != (batch,):
            raise CheckpointError(
                f"prefill got input_ids {tuple(input_ids.shape)}, prompt_lengths {tuple(prompt_lengths.shape)} "
                f"for a cache of {cache.batch_size} rows x {cache.max_len} slots; accepted: (B, T) ids with "
                "T <= max_len and (B,) lengths"
            )
        prompt_lengths = prompt_lengths.to(input_ids.device)
        if bool(((prompt_lengths < 1) | (prompt_lengths > seq)).any()):
            raise CheckpointError(f"prompt_lengths {prompt_lengths.tolist()} must lie in [1, {seq}]")
        slots = torch.arange(seq, device=input_ids.device)
        starts = seq - prompt_lengths
        positions = (slots[None] - starts[:, None]).clamp(min=0)
        causal = slots[:, None] >= slots[None, :]
        real_key = slots[None, None, :] >= starts[:, None, None]
        # Pad queries see only themselves so that no softmax row is empty (which would give NaNs).
        mask = (causal & real_key) | torch.eye(seq, dtype=torch.bool, device=input_ids.device)
        plan = AttendPlan(slots=slots.expand(batch, seq), mask=mask[:, None], kv_len=seq)
        hidden = self.model(input_ids, positions, cache, plan)
        cache.lengths.fill_(seq)
        cache.starts.copy_(starts)
        return (head or self.lm_head)(hidden[:, -1]).float()

    def decode(self, tokens: torch.Tensor, cache: KVCache, head: nn.Module | None = None) -> torch.Tensor:
        """Append k tokens per row (B, k) at each row's pointer; returns their logits (B, k, V) fp32.

        Causal among the k new tokens, attends only to each row's real slots, then advances the
        pointers by k. Static shapes for a given k, no host syncs: safe for CUDA graphs. The caller
        keeps lengths + k <= max_len. `head` replaces lm_head (see `prefill`).
        """
        steps = tokens.shape[1]
        slots = cache.lengths[:, None] + torch.arange(steps, device=tokens.device)
        positions = slots - cache.starts[:, None]
        all_slots = torch.arange(cache.max_len, device=tokens.device)
        visible = (all_slots >= cache.starts[:, None, None]) & (all_slots <= slots[:, :, None])
        plan = AttendPlan(slots=slots, mask=visible[:, None], kv_len=cache.max_len)
        hidden = self.model(tokens, positions, cache, plan)
        cache.lengths.add_(steps)
        return (head or self.lm_head)(hidden).float()

    def sub_head(self, rows: torch.Tensor) -> nn.Linear:
        """A head computing only the logits of vocabulary `rows`: inside an image only the image codes
        can be sampled, and skipping the other rows saves most of the head's bandwidth (v1: 7/8)."""
        head = nn.Linear(self.config.hidden_size, len(rows), bias=False, device=rows.device, dtype=self.lm_head.weight.dtype)
        with torch.no_grad():
            head.weight.copy_(self.lm_head.weight[rows])
        return head.requires_grad_(False)


def enable_activation_checkpointing(model: Transformer) -> None:
    """Recompute each block's activations in backward (non-reentrant torch.utils.checkpoint).

    Wraps the blocks' forward from outside, so parameter names and the block code are unchanged.
    """
    for block in model.model.layers:
        if not isinstance(block.forward, functools.partial):
            block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)
