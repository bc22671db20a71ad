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

    The search runs in at least float32 with autocast off, whatever the caller's autocast: in
    bf16 (8 mantissa bits) the cross term z·e rounds away differences of 1% between the two
    nearest codes, so a bf16 sampler snapped near-ties to the wrong code, most of all in a
    dense codebook (LlamaGen's K=16384 on the unit sphere).
    """
    b, d, h, w = z.shape
    dtype = torch.promote_types(codebook.dtype, torch.float32)
    with torch.autocast(z.device.type, enabled=False):
        book = codebook.to(dtype)
        flat = z.permute(0, 2, 3, 1).reshape(-1, d).to(dtype)
        norms = book.pow(2).sum(1)
        rows = max(1, chunk // book.shape[0])
        out = torch.empty(flat.shape[0], dtype=torch.long, device=z.device)
        for s in range(0, flat.shape[0], rows):
            part = flat[s : s + rows]
            dist = (part.pow(2).sum(1, keepdim=True) - 2 * part @ book.T) + norms
            out[s : s + rows] = dist.argmin(1)
    return out.view(b, h, w)
