"""The fixed-grid sampling driver every sampler shares: the time grid, the NFE and rows
count, and the trace. A sampler supplies its start state and one step:

    step(i, t, t_next, state, calls) → (next state, posterior to trace or None, traced t or None)

on the uniform grid t_i = i/steps (float64, i = 0..steps). The step calls the model through
its method and counts each call with ``calls.add(batch multiplier)`` (2 under CFG: the
conditional and unconditional halves in one batch); the driver records the trace (the state
before the step, the traced posterior, and the final state at t = 1) and returns
``SampleOutput(finish(final state), NFE, rows, trace)``. A step must not modify the state it
is given in place: the trace keeps it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .base import SampleOutput, record_trace


class Calls:
    """Model calls (NFE) and calls × batch multiplier (rows) of one sampling run."""

    def __init__(self):
        self.nfe = 0
        self.rows = 0

    def add(self, multiplier: int) -> None:
        self.nfe += 1
        self.rows += multiplier


def grid_times(steps: int) -> list[float]:
    return torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64).tolist()


def fixed_grid(
    state: torch.Tensor,
    steps: int,
    step: Callable,
    trace,
    finish: Callable | None = None,
    calls: Calls | None = None,
) -> SampleOutput:
    calls = Calls() if calls is None else calls
    times = grid_times(steps)
    records = [] if trace else None
    for i in range(steps):
        after, posterior, traced_t = step(i, times[i], times[i + 1], state, calls)
        if trace:
            t = times[i] if traced_t is None else traced_t
            record_trace(records, trace, {"t": t, "state": state.clone(), "posterior": posterior})
        state = after
    out = state if finish is None else finish(state)
    if trace:
        record_trace(records, trace, {"t": 1.0, "state": state.clone(), "posterior": None})
    return SampleOutput(out, calls.nfe, calls.rows, records)


class DrawAndMove:
    """``sample`` of a discrete method whose sampler draws c ~ p_θ and moves by its path's
    conditional process of c (dfm-metric, gidd): the method gives ``start(shape, generator)``,
    the source state, and ``move(x, c, t, t_next, generator)``."""

    @torch.no_grad()
    def sample(
        self,
        model,
        num_samples,
        grid,
        steps,
        y=None,
        solver="euler",
        temperature=1.0,
        cfg_scale=1.0,
        generator=None,
        trace=False,
    ) -> SampleOutput:
        self.check_sampling(solver, steps, grid)
        shape = (num_samples, *grid)
        start = self.start(shape, generator)
        sampling = (y, temperature, cfg_scale, generator)
        return posterior_draws(self, model, shape, steps, start, self.move, sampling, trace)


def posterior_draws(method, model, shape, steps, start, move, sampling, trace, traced=None):
    """The discrete samplers that, at every step, draw c ~ p_θ(· | x_t, t) = softmax(ℓ/τ) at
    every position (CFG on ℓ) and move the state by the path's conditional process of c:
    ``move(x, c, t, t_next, generator)`` (dfm's Euler, dfm-metric, gidd). ``sampling`` holds
    (y, temperature, cfg_scale, generator); ``traced(posterior, x)`` the posterior the trace
    keeps (e.g. made exact where the path leaves no doubt)."""
    y, temperature, cfg_scale, generator = sampling
    device = method.codebook.device

    def step(i, t, t_next, x, calls):
        tt = torch.full((shape[0],), t, device=device, dtype=torch.float32)
        c, _, post, mult = method.draw(model, x, tt, y, temperature, cfg_scale, generator, trace)
        calls.add(mult)
        if trace and traced is not None:
            post = traced(post, x)
        return move(x, c, t, t_next, generator), post, None

    return fixed_grid(start, steps, step, trace)
