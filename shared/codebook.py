"""The codebook E (K, d) as a lookup table: below both the tokenizers and the methods.

lookup(E, c)       c (B,H,W) ids → z (B,d,H,W) = E[c]
nearest_code(z, E) z (B,d,H,W) → ids (B,H,W) of the L2-nearest row of E
"""

from __future__ import annotations

import torch


def lookup(codebook: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """indices (B,H,W) → z (B,d,H,W) = E[indices]."""
    return codebook[indices.long()].permute(0, 3, 1, 2).contiguous()


def nearest_code(z: torch.Tensor, codebook: torch.Tensor, chunk: int = 1 << 24) -> torch.Tensor:
    """z (B,d,H,W) → indices (B,H,W) of the L2-nearest codebook row.

    For a unit-norm codebook (LlamaGen) this equals the cosine nearest neighbour. Distances
    are computed for a chunk of positions at a time (at most ``chunk`` entries alive): at
    K=16384 and a 32×32 grid the full (B·H·W, K) map would be 64 MiB per image.
    """
    b, d, h, w = z.shape
    flat = z.permute(0, 2, 3, 1).reshape(-1, d).to(codebook.dtype)
    norms = codebook.pow(2).sum(1)
    rows = max(1, chunk // codebook.shape[0])
    out = torch.empty(flat.shape[0], dtype=torch.long, device=z.device)
    for s in range(0, flat.shape[0], rows):
        part = flat[s : s + rows]
        dist = (part.pow(2).sum(1, keepdim=True) - 2 * part @ codebook.T) + norms
        out[s : s + rows] = dist.argmin(1)
    return out.view(b, h, w)
