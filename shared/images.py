"""Image grids for uint8 batches."""

from __future__ import annotations

import math
import os

import torch
from PIL import Image

from .io import atomic_open


def make_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2) -> torch.Tensor:
    """uint8 (B, C, H, W) → uint8 (C, rows·(H+pad)+pad, nrow·(W+pad)+pad), pad value 0."""
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(
            f"expected uint8 images (B,C,H,W), got {images.dtype} {tuple(images.shape)}"
        )
    b, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(b))
    rows = math.ceil(b / nrow)
    grid = torch.zeros(c, rows * (h + pad) + pad, nrow * (w + pad) + pad, dtype=torch.uint8)
    for i in range(b):
        r, col = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, y : y + h, x : x + w] = images[i]
    return grid


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int | None = None) -> None:
    """Write a PNG grid atomically (greyscale stays greyscale)."""
    grid = make_grid(images, nrow)
    arr = grid[0].numpy() if grid.shape[0] == 1 else grid.permute(1, 2, 0).numpy()
    with atomic_open(path, "wb") as f:
        Image.fromarray(arr).save(f, format="PNG")
