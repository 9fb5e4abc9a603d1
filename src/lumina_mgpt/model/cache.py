"""Static, preallocated key/value cache with per-row write pointers (rollback is a pointer move)."""

from __future__ import annotations

import torch

from lumina_mgpt.errors import CheckpointError


class KVCache:
    """Keys and values of every layer, shape (batch, kv_heads, max_len, head_dim) each.

    Row b holds left padding in slots [0, starts[b]) (never attended), its tokens in slots
    [starts[b], lengths[b]), and stale or empty slots after that. A token in slot s has RoPE
    position s - starts[b]. Create it with `Transformer.new_cache`.
    """

    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        num_kv_heads: int,
        max_len: int,
        head_dim: int,
        device: torch.device | str | None,
        dtype: torch.dtype,
    ) -> None:
        shape = (batch_size, num_kv_heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.lengths = torch.zeros(batch_size, device=device, dtype=torch.int64)
        self.starts = torch.zeros(batch_size, device=device, dtype=torch.int64)
        self.max_len = max_len
        if self.lengths.is_cuda:
            # CUDA graphs replay on fixed addresses: tell the compiler these in-place-updated tensors never move.
            for tensor in (*self.keys, *self.values, self.lengths, self.starts):
                torch._dynamo.mark_static_address(tensor)

    @property
    def batch_size(self) -> int:
        """Number of rows."""
        return self.lengths.shape[0]

    def rollback(self, counts: torch.Tensor | int) -> None:
        """Forget the last `counts` tokens of each row (an int, or a (B,) tensor); no data is copied.

        Tensor counts are not checked (that would cost a device sync per step); keep them within
        each row's decoded tokens.
        """
        if isinstance(counts, int):
            if counts < 0:
                raise CheckpointError(f"rollback count {counts} is negative; accepted: 0 or more tokens")
            counts = torch.full_like(self.lengths, counts)
        self.lengths.sub_(counts.to(self.lengths.device, torch.int64))
