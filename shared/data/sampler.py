"""A seeded, infinite, resumable index stream (progress is counted in images seen).

The global stream is the concatenation of per-epoch permutations of ``range(n)``; epoch
``e``'s permutation depends only on ``(seed, e)``. Position ``p`` of the stream is element
``p mod n`` of epoch ``p // n``. A run that has seen ``N`` images restarts with
``start=N`` and yields exactly the indices an uninterrupted run would have yielded next,
mid-epoch included. With ``world_size`` ranks, rank ``r`` takes positions
``start + r, start + r + world_size, …`` so a global batch of ``world_size·b`` images is
the same set whatever the number of ranks.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


def epoch_permutation(n: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    if not shuffle:
        return np.arange(n)
    return np.random.Generator(np.random.PCG64([seed, epoch])).permutation(n)


class InfiniteSampler(Sampler[int]):
    def __init__(
        self,
        n: int,
        seed: int = 0,
        start: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ):
        if n <= 0:
            raise ValueError(f"InfiniteSampler needs a non-empty dataset, got n={n}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside [0, world_size={world_size})")
        if start < 0:
            raise ValueError(f"start (images seen) must be ≥ 0, got {start}")
        self.n = n
        self.seed = seed
        self.start = start
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle

    def __iter__(self) -> Iterator[int]:
        pos = self.start + self.rank
        epoch, perm = None, None
        while True:
            e = pos // self.n
            if e != epoch:
                epoch, perm = e, epoch_permutation(self.n, self.seed, e, self.shuffle)
            yield int(perm[pos % self.n])
            pos += self.world_size

    def __len__(self) -> int:  # infinite; DataLoader only needs this for len(loader)
        raise TypeError("InfiniteSampler is infinite; count progress in images seen instead")
