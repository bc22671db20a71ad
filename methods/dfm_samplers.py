"""Samplers of discrete flow matching on the mixture path of ``methods/dfm.py``.

discrete Euler, step [t, t+h):
    a position jumps with probability (κ(t+h) − κ(t))/(1 − κ(t))
        [= h·κ̇/(1−κ) for κ(t) = t: the rate κ̇/(1−κ)·(p_θ − δ_{x_t})]
    to a code drawn from p_θ = softmax(ℓ/τ); the last step jumps with probability 1
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


@torch.no_grad()
def euler(
    dfm,
    model,
    num_samples,
    grid,
    steps,
    y,
    temperature,
    cfg_scale,
    generator,
    trace,
    carry_over: bool,
) -> SampleOutput:
    """Discrete Euler from the source tokens. Which positions may jump:

    - ``carry_over`` (masked source, ``solver="euler"``): only masked ones, so an unmasked
      position never changes again (MDLM's carry-over). On the mixture path with a mask
      source x_t = c wherever x_t is not the mask, so the exact posterior there is a point
      mass on the current token and the exact rate is zero: the network is not needed there,
      and with ``weighting="mdlm"`` it is untrained there (zero loss weight).
    - otherwise every position: the uniform source (a real code may still be noise), or
      ``solver="euler-redraw"``, the sampler of the official Purrception code's DFM and of
      flow_matching's mixture Euler solver, where a decoded token is redrawn from p_θ with the
      same probability. It is exact only for a network that is exact at unmasked positions
      too; its results rows are labelled ``…-redraw``.
    """
    device = dfm.codebook.device

    def step(i, t, t_next, x, calls):
        t_batch = torch.full((num_samples,), t, device=device, dtype=torch.float32)
        proposal, _, post, multiplier = dfm.draw(
            model, x, t_batch, y, temperature, cfg_scale, generator, trace
        )
        calls.add(multiplier)
        if trace and carry_over:
            post = dfm.carry_over(post, x)
        kappa_t = dfm.kappa(t)
        kappa_next = dfm.kappa(t_next)
        jump_p = 1.0 if i == steps - 1 else (kappa_next - kappa_t) / (1.0 - kappa_t)
        if jump_p >= 1.0:
            jump = torch.ones(x.shape, dtype=torch.bool, device=device)
        else:  # the same uniforms whichever positions may jump
            jump = noise.rand(x.shape, device, generator) < jump_p
        if carry_over:  # decoded positions keep their token (their posterior is a point mass)
            jump &= x == dfm.mask_id
        return torch.where(jump, proposal, x), post, None

    return fixed_grid(
        dfm.source_tokens((num_samples, *grid), device, generator), steps, step, trace
    )


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
    dfm, model, num_samples, grid, steps, y, temperature, cfg_scale, generator, trace, options
) -> SampleOutput:
    """MaskGIT from all masked, one model call per step. The model sees the time
    t = κ⁻¹(fraction unmasked), the time of the mixture path at which that fraction is
    expected unmasked."""
    device = dfm.codebook.device
    n = grid[0] * grid[1]

    def step(i, t_grid, t_next, x, calls):
        masked = x == dfm.mask_id
        masked_now = int(masked[0].sum())  # the same for every sample: one schedule
        fraction = torch.full((num_samples,), 1.0 - masked_now / n, device=device)
        t = dfm.kappa_inverse(fraction)
        codes, score, post, multiplier = dfm.draw(
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
            x.scatter_(1, remask, dfm.mask_id)
        return x.view(num_samples, *grid), post, float(t[0])

    return fixed_grid(
        dfm.source_tokens((num_samples, *grid), device, generator), steps, step, trace
    )
