"""Image grids for uint8 batches."""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

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


def save_grid(
    images: torch.Tensor, path: str | os.PathLike, nrow: int | None = None, text: dict | None = None
) -> None:
    """Write a PNG grid atomically (greyscale stays greyscale); ``text``: PNG text chunks
    (e.g. which class each row shows)."""
    grid = make_grid(images, nrow)
    arr = grid[0].numpy() if grid.shape[0] == 1 else grid.permute(1, 2, 0).numpy()
    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, str(value))
    with atomic_open(path, "wb") as f:
        Image.fromarray(arr).save(f, format="PNG", pnginfo=info)


def pick_by_class(labels: torch.Tensor, max_classes: int = 16, per_class: int = 16):
    """Which images a class grid shows, for any class count (one column per class
    would be 258,002 px wide at 1000 classes): at most ``max_classes`` classes,
    evenly spaced over those present, and the first ``per_class`` images of each (fewer if a
    chosen class has fewer). Returns (indices, class-major, into ``labels``; the classes shown;
    images per class)."""
    labels = labels.cpu()
    present = torch.unique(labels).tolist()
    if len(present) > max_classes:
        present = [
            present[i] for i in np.linspace(0, len(present) - 1, max_classes).round().astype(int)
        ]
    members = [torch.nonzero(labels == c).flatten() for c in present]
    per = max(1, min(per_class, *(len(m) for m in members)))
    return torch.cat([m[:per] for m in members]), present, per
