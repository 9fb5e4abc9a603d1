"""Nearest-neighbour vector quantization against a codebook (taming / Chameleon / MoVQGAN rule)."""

from __future__ import annotations

import torch

# Rows of latents per distance block: keeps the (rows x codebook) distance matrix near 256 MB.
_DISTANCE_BLOCK_ELEMENTS = 2**26


def nearest_codes(latents: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the closest codebook row for each latent vector.

    latents: (B, C, h, w); codebook: (K, C). Returns LongTensor (B, h, w), row-major like the
    official `min_encoding_indices`. Distances use the official expansion |z|^2 + |e|^2 - 2 z.e,
    in float32 whatever the model dtype, and are computed in blocks so 16k-code books fit in memory."""
    batch, channels, height, width = latents.shape
    flat = latents.permute(0, 2, 3, 1).reshape(-1, channels).float()
    table = codebook.float()
    table_sq = table.pow(2).sum(dim=1)
    rows = max(1, _DISTANCE_BLOCK_ELEMENTS // table.shape[0])
    codes = torch.empty(flat.shape[0], dtype=torch.long, device=flat.device)
    for start in range(0, flat.shape[0], rows):
        block = flat[start : start + rows]
        distances = block.pow(2).sum(dim=1, keepdim=True) + table_sq - 2 * block @ table.t()
        codes[start : start + rows] = distances.argmin(dim=1)
    return codes.view(batch, height, width)


def code_distances(latents: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Differentiable squared distances (B, K, h, w) from each latent (B, C, h, w) to every code (K, C)."""
    flat = latents.permute(0, 2, 3, 1).float()
    table = codebook.float()
    distances = flat.pow(2).sum(-1, keepdim=True) + table.pow(2).sum(-1) - 2 * flat @ table.t()
    return distances.permute(0, 3, 1, 2)


def lookup(codes: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Codebook vectors for codes (B, h, w) as latents (B, C, h, w)."""
    return codebook[codes].permute(0, 3, 1, 2).contiguous()


def quantize_with_losses(
    latents: torch.Tensor, codebook: torch.Tensor, commitment_weight: float = 0.25
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training-time quantization: (straight-through latents, codes, codebook + commitment loss)."""
    codes = nearest_codes(latents.detach(), codebook)
    quantized = lookup(codes, codebook)
    codebook_loss = torch.nn.functional.mse_loss(quantized, latents.detach())
    commitment_loss = torch.nn.functional.mse_loss(latents, quantized.detach())
    straight_through = latents + (quantized - latents).detach()
    return straight_through, codes, codebook_loss + commitment_weight * commitment_loss
