"""MaskGIT on the masked mixture path (``methods/paths.py``); discrete Euler on it is the
path's own step under the shared posterior-draw sampler (``methods/sampling.py``).

MaskGIT (Chang et al. 2022), step i of n, r = (i+1)/n:
    c ~ softmax(ℓ/τ) at every masked position,
    confidence = log softmax(ℓ/τ_conf)[c] + choice_temperature·(1 − r)·Gumbel,
    the ⌊N·γ(r)⌋ least confident stay masked
"""

from __future__ import annotations

import math

import torch

from . import noise
from .base import SampleOutput
from .records.dfm import MASKGIT_SCHEDULES
from .sampling import fixed_grid


def maskgit_masked(
    num_positions: int, step: int, steps: int, masked_now: int, schedule: str
) -> int:
    """How many positions stay masked after ``step`` (0-based) of ``steps``: ⌊N·γ(r)⌋, but at
    least one fewer than now (every call unmasks a token) and at least one for each step still
    to come (the reference's ``max(1, …)`` at the second-to-last step); none after the last.
    Both bounds hold because ``steps`` ≤ N (``DFM.check_sampling``)."""
    if step == steps - 1:
        return 0
    gamma = MASKGIT_SCHEDULES[schedule]
    masked = math.floor(num_positions * gamma((step + 1) / steps))
    return max(steps - 1 - step, min(masked, masked_now - 1))


@torch.no_grad()
def maskgit(
    method, model, num_samples, grid, steps, y, temperature, cfg_scale, generator, trace, options
) -> SampleOutput:
    """MaskGIT from all masked, one model call per step. The model sees the time
    t = κ⁻¹(fraction unmasked), the time of the mixture path at which that fraction is
    expected unmasked."""
    device, path = method.codebook.device, method.path
    n = grid[0] * grid[1]

    def step(i, t_grid, t_next, x, calls):
        masked = x == path.mask_id
        masked_now = int(masked[0].sum())  # the same for every sample: one schedule
        fraction = torch.full((num_samples,), 1.0 - masked_now / n, device=device)
        t = path.kappa_inverse(fraction)
        codes, score, post, multiplier = method.draw(
            model,
            x,
            t,
            y,
            temperature,
            cfg_scale,
            generator,
            trace,
            score_temperature=options.confidence_temperature,
        )
        calls.add(multiplier)
        remasked = maskgit_masked(n, i, steps, masked_now, options.schedule)
        u = noise.rand(x.shape, device, generator).clamp_(1e-20, 1.0)
        gumbel_scale = options.choice_temperature * (1.0 - (i + 1) / steps)
        confidence = score.float() - gumbel_scale * torch.log(-torch.log(u))
        confidence = torch.where(masked, confidence, torch.full_like(confidence, math.inf))
        confidence = confidence.view(num_samples, n)
        x = torch.where(masked, codes, x).view(num_samples, n)
        if remasked > 0:
            remask = confidence.topk(remasked, dim=1, largest=False).indices
            x.scatter_(1, remask, path.mask_id)
        return x.view(num_samples, *grid), post, float(t[0])

    return fixed_grid(
        path.source_tokens((num_samples, *grid), device, generator), steps, step, trace
    )
