"""The learning-rate schedule, and the decay branches of warmup-stable-decay (wsd).

Every run warms up linearly over ``optim.warmup_steps`` optimiser steps. ``optim.schedule=
constant`` then keeps the learning rate; ``optim.schedule=wsd`` (MiniCPM, Hu et al. 2024,
arXiv 2404.06395; Hägele et al. 2024, arXiv 2405.18392) holds it and decays it linearly to
zero over the last ``optim.decay_fraction`` of the budget:

    lr(s) = optim.lr · min(1, (s+1)/warmup) · decay(s)
    decay(s) = (end − s)/(end − d) on the decay phase d = decay_start(end) ≤ s < end, else 1

Under wsd the main run evaluates only at its end. Every earlier evaluation point e gets its
own decay branch: at step d(e) = e − round(fraction·e) the loop sets the run's state aside
(weights, EMA, optimiser), trains on to e with the learning rate decaying to zero at e,
evaluates, and returns to the main run at d(e) with its state restored. Since data, noise and
learning rate are functions of the step, that branch is exactly the end of a run whose budget
is e, so one run gives an annealed FD at every budget for about 1.2× its compute (log
spacing, fraction 0.2: the branches add 0.2·(e₁ + … + e_{K−1}) ≈ 0.2 of the budget). A stop
inside a branch returns to the main run and stops at d(e); the relaunch runs the branch again,
identically.

The loop calls this module at three points: ``Schedule.lr``, every step's learning rate;
``Schedule.pending`` and ``run_branches``, when the main run reaches a fork (or resumes at one
whose branches a stop cut short); ``Schedule.row_labels``, each metrics row's schedule.
"""

from __future__ import annotations

import math
import time

import torch


def decay_start(end: int, fraction: float) -> int:
    """The first step of the decay phase of a run whose budget is ``end`` steps."""
    return end - max(1, round(fraction * end)) if fraction > 0 else end


def lr_at(
    step: int, lr: float, warmup_steps: int, end: int | None = None, decay_fraction: float = 0.0
) -> float:
    """Linear warm-up over ``warmup_steps`` optimiser steps, then constant (0-based step);
    with ``end`` and a ``decay_fraction``, times (end − step)/(end − d) on the decay phase
    d = decay_start(end) ≤ step < end: linear to zero at ``end`` (its last step: lr/(end − d))."""
    scale = min(1.0, (step + 1) / max(1, warmup_steps))
    if end is not None and decay_fraction > 0:
        start = decay_start(end, decay_fraction)
        if step >= start:
            scale *= (end - step) / (end - start)
    return lr * scale


def schedule_of(optim) -> tuple[str, float]:
    """(schedule, decay fraction) of an optim config; configs from before the key: constant."""
    schedule = optim.get("schedule", "constant")
    return schedule, (float(optim.get("decay_fraction", 0.2)) if schedule == "wsd" else 0.0)


def schedule_label(optim) -> str:
    """``constant`` or ``wsd0.2``: the learning-rate schedule a metrics row was trained with."""
    schedule, fraction = schedule_of(optim)
    return f"wsd{fraction:g}" if schedule == "wsd" else schedule


def row_anchor(row: dict) -> int:
    """The main-line step at which a metrics row was written: a decay branch's row (its step
    before the run's last) at the branch's fork, any other row at its own step. A resumed run
    keeps the rows whose anchor it has reached."""
    step, fork = int(row["step"]), row.get("decay_from")
    total = row.get("total_steps")
    if fork not in (None, "") and total not in (None, "") and step < int(total):
        return int(fork)
    return step


class Schedule:
    """One run's learning rate, and its decay branches: fork step → the evaluation steps
    whose branches fork there (``trainer.decay_plan``; empty under a constant schedule)."""

    def __init__(self, optim, total_steps: int, branches: dict[int, list[int]]):
        self.optim = optim
        self.total_steps = total_steps
        self.branches = branches
        self.fraction = schedule_of(optim)[1]  # 0: constant after warm-up
        self.label = schedule_label(optim)

    def lr(self, step: int, end: int) -> float:
        """The learning rate of ``step`` on the way to ``end`` (the budget or a branch's end)."""
        return lr_at(step, self.optim.lr, self.optim.warmup_steps, end, self.fraction)

    def pending(self, step: int, rows: list) -> list[int]:
        """The evaluation steps whose decay branch forks at ``step`` and has no row yet."""
        ends = self.branches.get(step, ())
        if not ends:
            return []
        done = {int(r["step"]) for r in rows}
        return [end for end in ends if end not in done]

    def row_labels(self, branch_from: int | None) -> tuple[str, int | None]:
        """A metrics row's ``lr_schedule`` and ``decay_from``: the step where its learning-rate
        decay began, its branch's fork or the main run's own decay phase (None: constant)."""
        fork = branch_from
        if fork is None and self.fraction:
            fork = decay_start(self.total_steps, self.fraction)
        return self.label, fork


def clone(state):
    """A copy of a (nested) state dict whose tensors share no memory with the original."""
    if isinstance(state, torch.Tensor):
        return state.detach().clone()
    if isinstance(state, dict):
        return {k: clone(v) for k, v in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(clone(v) for v in state)
    return state


def run_branches(loop, start: int, gen: torch.Generator) -> None:
    """Every pending branch that forks at ``start``, on ``loop`` (``train_loop.Loop``): set the
    state aside, train to the branch's end with the learning rate decaying to zero there,
    evaluate, and return to the main run at ``start``. A stop inside a branch returns to the
    main run first, then stops there."""
    parts, log_every = loop.parts, loop.cfg.log_every
    saved = {
        "model": clone(parts.model.state_dict()),
        "ema": clone(parts.ema.state_dict()),
        "opt": clone(parts.opt.state_dict()),
    }
    for end in loop.schedule.pending(start, loop.rows):
        stream, t0, losses = loop.data.stream(start), time.time(), loop.new_losses()
        if loop.ranks.main:
            loop.report(
                f"decay branch: steps {start} → {end} (learning rate to zero at "
                f"{end}, then back to step {start})"
            )
        stopped = False
        for step in range(start, end):
            losses.add(loop.train_at(step, end, stream, gen))
            # ranks agree every log_every branch steps (not at steps that are multiples of
            # log_every: the fork need not be one); never on the last step, whose branch is done
            if (
                step + 1 < end
                and (step + 1 - start) % log_every == 0
                and loop.stop_requested(step + 1, sync=True)
            ):
                stopped = True
                break
        if not stopped:
            losses.sync()
            loss = losses.mean()
            if not math.isfinite(loss):
                where = f"in the decay branch from step {start} to {end}"
                raise loop.non_finite(f"non-finite loss {where}")
            wall = loop.progress.wall_s + time.time() - t0
            loop.evaluate(end, wall_s=wall, loss=loss, branch_from=start)
        # back to the main run (the optimiser's state is copied again: loading may alias it)
        parts.model.load_state_dict(saved["model"])
        parts.ema.load_state_dict(saved["ema"])
        parts.opt.load_state_dict(clone(saved["opt"]))
        if stopped:
            loop.stop_now(start)
