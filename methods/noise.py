"""Random draws of the samplers, from one generator or from one generator per sample.

Every draw a sampler makes has the batch as its first dimension. With a ``torch.Generator``
(or None) the batch is drawn at once, as torch does. With :class:`PerSample` each sample's
row is drawn from that sample's own generator, so sample i's noise depends on its own seed
alone — not on the batch it is drawn in, its position there, or how many processes share
the work (``experiments/sample.py``: image i of a sample file comes from (seed, i)).
"""

from __future__ import annotations

import hashlib

import torch


def sample_seed(seed: int, index: int, stream: str = "noise") -> int:
    """A 63-bit seed for sample ``index`` of a job seeded ``seed`` (distinct per stream)."""
    digest = hashlib.sha256(f"{stream}:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class PerSample:
    """One CPU generator per sample of a batch (draws are moved to the batch's device)."""

    def __init__(self, seed: int, indices, stream: str = "noise"):
        self.generators = [
            torch.Generator().manual_seed(sample_seed(seed, int(i), stream)) for i in indices
        ]

    def __len__(self) -> int:
        return len(self.generators)

    def draw(self, fn, shape, device, **kw) -> torch.Tensor:
        if shape[0] != len(self.generators):
            raise ValueError(f"a draw of shape {tuple(shape)} for {len(self)} generators")
        rows = [fn(*shape[1:], generator=g, **kw) for g in self.generators]
        return torch.stack(rows).to(device)


def rand(shape, device, generator=None, dtype=None) -> torch.Tensor:
    if isinstance(generator, PerSample):
        return generator.draw(torch.rand, tuple(shape), device, dtype=dtype)
    return torch.rand(tuple(shape), device=device, generator=generator, dtype=dtype)


def randn(shape, device, generator=None, dtype=None) -> torch.Tensor:
    if isinstance(generator, PerSample):
        return generator.draw(torch.randn, tuple(shape), device, dtype=dtype)
    return torch.randn(tuple(shape), device=device, generator=generator, dtype=dtype)


def randint(high: int, shape, device, generator=None) -> torch.Tensor:
    if isinstance(generator, PerSample):

        def draw(*size, generator):
            return torch.randint(0, high, size, generator=generator)

        return generator.draw(draw, tuple(shape), device)
    return torch.randint(0, high, tuple(shape), device=device, generator=generator)
