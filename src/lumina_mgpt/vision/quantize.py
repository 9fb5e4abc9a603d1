"""Nearest-neighbour vector quantization against a codebook (taming / Chameleon / MoVQGAN rule)."""

from __future__ import annotations

import torch

# Rows of latents per distance block: keeps the (rows x codebook) distance matrix near 256 MB.
_DISTANCE_BLOCK_ELEMENTS = 2**26
# Float32 candidates re-ranked by exact float64 distances; more than any group of near-equal codes.
_REFINED_CANDIDATES = 8


def nearest_codes(latents: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the closest codebook row for each latent vector, the same on every machine.

    latents: (B, C, h, w); codebook: (K, C). Returns LongTensor (B, h, w), row-major like the
    official `min_encoding_indices`. The official rule ranks codes by |z|^2 + |e|^2 - 2 z.e in
    float32, whose rounding (a step of ~0.02 at latent norms of ~400) is larger than the gap between
    near-equal codes; which of them wins then depends on the CPU's kernels and even on the batch
    shape. So the float32 expansion, taken around the codebook mean to shrink its terms, only picks
    a few candidates, and the exact float64 distance (z - e)^2 chooses among them, the lowest index
    on an exact tie. Where the official rule is not at such a tie, both give the same code.
    Computed in blocks so 16k-code books fit in memory."""
    batch, channels, height, width = latents.shape
    table = codebook.float()
    center = table.mean(dim=0)
    flat = latents.permute(0, 2, 3, 1).reshape(-1, channels).float() - center
    table = table - center
    table_sq = table.pow(2).sum(dim=1)
    candidates = min(_REFINED_CANDIDATES, table.shape[0])
    rows = max(1, _DISTANCE_BLOCK_ELEMENTS // table.shape[0])
    codes = torch.empty(flat.shape[0], dtype=torch.long, device=flat.device)
    for start in range(0, flat.shape[0], rows):
        block = flat[start : start + rows]
        distances = block.pow(2).sum(dim=1, keepdim=True) + table_sq - 2 * block @ table.t()
        # Candidates in index order, so that argmin's first-minimum rule breaks exact ties by index.
        nearest = distances.topk(candidates, dim=1, largest=False).indices.sort(dim=1).values
        exact = (block.double()[:, None, :] - table.double()[nearest]).pow(2).sum(dim=-1)
        codes[start : start + rows] = nearest.gather(1, exact.argmin(dim=1, keepdim=True)).squeeze(1)
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


def kmeans(vectors: torch.Tensor, clusters: int, iterations: int, generator: torch.Generator) -> torch.Tensor:
    """Lloyd's k-means on rows of `vectors` (N, C): (clusters, C) centroids, float32.

    Seeded by k-means++ (each new centroid drawn with probability proportional to its squared
    distance from the chosen ones), so separated groups each get a centroid; a cluster that empties
    is moved onto the row served worst, so every centroid ends up used when there are at least as
    many distinct rows as clusters (the point of initializing a codebook this way)."""
    data = vectors.float()
    first = int(torch.randint(data.shape[0], (1,), generator=generator))
    centroids = data[first].repeat(clusters, 1)
    nearest = (data - centroids[0]).square().sum(1)
    for index in range(1, clusters):
        if nearest.sum() <= 0:  # fewer distinct rows than clusters: the rest stay duplicates for now
            break
        pick = int(torch.multinomial(nearest, 1, generator=generator))
        centroids[index] = data[pick]
        nearest = torch.minimum(nearest, (data - data[pick]).square().sum(1))
    for _ in range(iterations):
        assignment = nearest_codes(data[:, :, None, None], centroids).flatten()
        sums = torch.zeros_like(centroids).index_add_(0, assignment, data)
        counts = torch.bincount(assignment, minlength=clusters)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
        empty = torch.nonzero(~filled).flatten()
        if empty.numel():
            worst_first = (data - centroids[assignment]).square().sum(1).argsort(descending=True)
            # (with fewer rows than clusters some centroids must share a row)
            centroids[empty] = data[worst_first[torch.arange(empty.numel()) % worst_first.numel()]]
    return centroids
