"""The codebook E (K, d) as a lookup table: below both the tokenizers and the methods.

lookup(E, c)       c (B,H,W) ids → z (B,d,H,W) = E[c]
nearest_code(z, E) z (B,d,H,W) → ids (B,H,W) of the L2-nearest row of E
"""

from __future__ import annotations

import torch


def lookup(codebook: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """indices (B,H,W) → z (B,d,H,W) = E[indices]."""
    return codebook[indices.long()].permute(0, 3, 1, 2).contiguous()


def nearest_code(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """z (B,d,H,W) → indices (B,H,W) of the L2-nearest codebook row.

    For a unit-norm codebook (LlamaGen) this equals the cosine nearest neighbour.
    """
    b, d, h, w = z.shape
    flat = z.permute(0, 2, 3, 1).reshape(-1, d).to(codebook.dtype)
    dist = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codebook.T) + codebook.pow(2).sum(1)
    return dist.argmin(1).view(b, h, w)
