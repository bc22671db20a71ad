"""The training loop: the loop decides *when* (log, evaluate, checkpoint, stop); the step
and the checkpoint decide *how*.

Randomness and learning rate are functions of the step, so a resumed run continues exactly
as an uninterrupted one, whatever else the process built (or drew random numbers for) first:

    generator of step s = seeded from (seed, rank, s)      time, noise, corruption, class dropout
    lr(s)               = optim.lr · min(1, (s+1)/warmup) · decay(s)
    data rows of step s = positions s·B … (s+1)·B−1 of the seeded stream (InfiniteSampler)

``optim.schedule=wsd`` (warmup-stable-decay: MiniCPM, Hu et al. 2024, arXiv 2404.06395;
Hägele et al. 2024, arXiv 2405.18392) decays the learning rate linearly to zero over the last
``optim.decay_fraction`` of the budget. Every earlier evaluation point e gets its own decay
branch: at step d(e) = e − round(fraction·e) the loop sets the run's state aside, trains on to
e with the learning rate decaying to zero at e, evaluates, and restores the state. Since data,
noise and learning rate are functions of the step, that branch is exactly the end of a run
whose budget is e, so one run gives an annealed FD at every budget for about 1.2× its compute
(log spacing, fraction 0.2: the branches add 0.2·(e₁ + … + e_{K−1}) ≈ 0.2 of the budget).
A stop inside a branch restores the state and stops at d(e); the relaunch runs the branch
again, identically.
"""

from __future__ import annotations

import datetime
import hashlib
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from shared.data import InfiniteSampler
from shared.optim import clip_and_step, ema_decay, ema_update
from shared.progress import progress_bar

from . import checkpoint
from .checks import flat_keys
from .errors import NonFiniteLossError, RunInterrupted
from .evaluation import write_csv
from .labels import method_label
from .metrics_file import csv_text
from .tracking import Tracker


def step_seed(seed: int, rank: int, step: int) -> int:
    """A 63-bit seed for (run seed, rank, step); distinct triples give unrelated streams."""
    digest = hashlib.sha256(f"vqbench/{seed}/{rank}/{step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


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


def row_anchor(row: dict) -> int:
    """The main-line step at which a metrics row was written: a decay branch's row (its step
    before the run's last) at the branch's fork, any other row at its own step. A resumed run
    keeps the rows whose anchor it has reached."""
    step, fork = int(row["step"]), row.get("decay_from")
    total = row.get("total_steps")
    if fork not in (None, "") and total not in (None, "") and step < int(total):
        return int(fork)
    return step


def schedule_label(optim) -> str:
    """``constant`` or ``wsd0.2``: the learning-rate schedule a metrics row was trained with."""
    schedule, fraction = schedule_of(optim)
    return f"wsd{fraction:g}" if schedule == "wsd" else schedule


def train_step(
    method,
    model,
    net,
    opt,
    ema,
    c,
    y,
    gen,
    *,
    lr: float,
    grad_clip: float,
    ema_decay: float,
    use_bf16: bool,
) -> torch.Tensor:
    """One optimiser step (the trainer's and the benchmark's): class dropout and the method's
    loss drawn from ``gen``, AdamW at ``lr`` with clipping, then the EMA. Returns the loss
    (detached, on device: no host sync)."""
    model.train()
    y = model.drop_labels(y, gen)
    with torch.autocast(c.device.type, dtype=torch.bfloat16, enabled=use_bf16):
        out = method.loss(net, c, y, generator=gen)
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    for group in opt.param_groups:
        group["lr"] = lr
    clip_and_step(model, opt, grad_clip)
    ema_update(ema, model, ema_decay)
    return out.loss.detach().float()


def clone(state):
    """A copy of a (nested) state dict whose tensors share no memory with the original."""
    if isinstance(state, torch.Tensor):
        return state.detach().clone()
    if isinstance(state, dict):
        return {k: clone(v) for k, v in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(clone(v) for v in state)
    return state


class StopSignals:
    """SIGTERM (SLURM's warning before a kill) and SIGINT set a flag that the loop reads at a
    step boundary; a second SIGINT interrupts at once. Handlers are restored on exit."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, h in self._previous.items():
            signal.signal(s, h)
        return False


@dataclass
class Parts:
    """What the loop works on, built by ``experiments/runner/trainer.py``."""

    method: object
    model: torch.nn.Module
    net: torch.nn.Module  # model, wrapped by DDP / torch.compile
    ema: torch.nn.Module
    opt: object  # shared.optim.FusedAdamW or a torch.optim.Optimizer (optim.fused=false)
    shards: object
    evaluator: object  # None on ranks > 0
    device: torch.device
    use_bf16: bool
    flops_per_step: int
    total_steps: int
    evals: list[int]  # main-line evaluations (under wsd: the last step only)
    identity: dict
    # wsd: decay branch start → the evaluation steps whose branches fork there
    branches: dict[int, list[int]] = field(default_factory=dict)


@dataclass
class LogInterval:
    """The log line's interval, from ``step``: its synced loss sum and count, and its training
    seconds (``train_s`` before the last resume of training at ``resumed``; evaluations and
    checkpoints in between do not count)."""

    step: int
    loss_sum: float = 0.0
    loss_count: int = 0
    resumed: float = field(default_factory=time.time)
    train_s: float = 0.0


class Loop:
    """Runs ``parts`` from ``progress.step`` to ``total_steps``; see the module docstring."""

    def __init__(
        self,
        cfg,
        parts: Parts,
        progress: checkpoint.Progress,
        rows: list,
        rundir,
        ranks,
        stop: StopSignals,
        checkpoint_step: int | None,
        on_evaluation=(),
        tracker: Tracker | None = None,
    ):
        self.cfg = cfg
        self.parts = parts
        self.progress = progress
        self.rows = rows
        self.rundir = rundir
        self.ranks = ranks  # the process group (build.Dist)
        self.stop = stop
        self.checkpoint_step = checkpoint_step  # step of the last finite checkpoint on disk
        self.on_evaluation = on_evaluation  # callables (run_dir, row) → message or None
        self.tracker = tracker or Tracker()  # TensorBoard / W&B on the main rank (logger=…)
        self.steps_per_s = 0.0
        self.save_seconds: float | None = None
        self.config = flat_keys(cfg)
        # loss sum since the last sync, in float64: exact for float32 losses, so the logged mean
        # does not depend on where syncs fell (a resumed run syncs at other steps)
        self.pending = torch.zeros((), device=parts.device, dtype=torch.float64)
        self.pending_n = 0
        self.synced_step = progress.step
        # the log line's interval: a cluster job without progress bars still prints (and
        # writes run.log) every log_every steps, long before its first evaluation
        self.interval = LogInterval(progress.step)
        self.schedule = schedule_of(cfg.optim)[1]  # decay fraction (0: constant after warm-up)
        self.schedule_label = schedule_label(cfg.optim)

    def lr(self, step: int, end: int) -> float:
        """The learning rate of ``step`` on the way to ``end`` (the budget or a branch's end)."""
        optim = self.cfg.optim
        return lr_at(step, optim.lr, optim.warmup_steps, end, self.schedule)

    def report(self, line: str, bar, echo: bool = True) -> None:
        """One status line: to run.log in the run folder (every line), and to the console
        above the progress bar when ``echo``."""
        if echo:
            bar.write(line)
        with open(os.path.join(self.rundir.path, "run.log"), "a") as f:
            f.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {line}\n")

    def log_values(self, step: int) -> dict:
        """The log line's numbers since the last line: mean loss, learning rate, training
        throughput (training time only; evaluations come on top), FLOPs so far."""
        cfg, parts = self.cfg, self.parts
        interval = self.interval
        train_s = interval.train_s + (time.time() - interval.resumed)
        rate = (step - interval.step) / train_s if train_s > 0 else 0.0  # steps/s
        values = {
            "train/loss": interval.loss_sum / interval.loss_count
            if interval.loss_count
            else float("nan"),
            "train/lr": self.lr(step - 1, parts.total_steps),
            "train/images_per_s": cfg.budget.batch_size * rate,
            "train/flops": float(step * parts.flops_per_step),
        }
        self.interval = LogInterval(step)
        self.steps_per_s = rate
        return values

    def log_line(self, step: int, values: dict) -> str:
        """step, images, FLOPs, loss, lr, throughput and ETA, as one line."""
        total, rate = self.parts.total_steps, self.steps_per_s
        eta = datetime.timedelta(seconds=round((total - step) / rate)) if rate else "?"
        return (
            f"step {step}/{total} ({100 * step / total:.0f}%) | images "
            f"{step * self.cfg.budget.batch_size:,} | train FLOPs {values['train/flops']:.3g} | "
            f"loss {values['train/loss']:.4f} | lr {values['train/lr']:.3g} "
            f"| {values['train/images_per_s']:.1f} img/s | ETA {eta}"
        )

    def run(self) -> None:
        cfg, parts, progress = self.cfg, self.parts, self.progress
        batch = cfg.budget.batch_size
        stream = iter(
            InfiniteSampler(
                len(parts.shards),
                seed=cfg.seed,
                start=progress.step * batch,
                rank=self.ranks.rank,
                world_size=self.ranks.world,
            )
        )
        gen = torch.Generator(parts.device)
        bar = progress_bar(
            total=parts.total_steps,
            initial=progress.step,
            unit="step",
            dynamic_ncols=True,
            desc=f"{method_label(cfg)} s{cfg.seed}",
            disable=not (self.ranks.main and cfg.progress),
        )
        t_seg = time.time()
        try:
            # Resumed where a stop cut a decay branch short: finish its branches first.
            if self.pending_branches(progress.step):
                self.decay_branches(progress.step, gen, bar)
                self.save()
                t_seg = self.interval.resumed = time.time()
            while progress.step < parts.total_steps:
                # Train one step: its batch, then method.loss, backward, AdamW and EMA.
                codes, labels = self.batch(progress.step, stream, gen)
                settings = self.step_settings(progress.step, parts.total_steps)
                loss = train_step(*self.trained, codes, labels, gen, **settings)
                self.pending = self.pending + loss.double()
                self.pending_n += 1
                progress.step += 1
                bar.update()
                step = progress.step
                is_branch = step in parts.branches and bool(self.pending_branches(step))
                is_eval = step in parts.evals
                is_ckpt = step % cfg.checkpoint_every == 0 or is_branch

                # Report: the mean loss since the last line, throughput, ETA.
                if step % cfg.log_every == 0 or is_eval or is_ckpt:
                    self.sync_losses(step)
                    if self.ranks.main and cfg.progress:
                        rate = bar.format_dict.get("rate") or 0.0  # steps/s (tqdm's smoothed)
                        bar.set_postfix(
                            loss=f"{progress.mean_loss():.4f}",
                            img_s=f"{batch * rate:.0f}",
                            refresh=False,
                        )
                    if self.ranks.main and step % cfg.log_every == 0:
                        values = self.log_values(step)
                        self.report(self.log_line(step, values), bar, echo=not cfg.progress)
                        self.tracker.log(step, values)

                # Decay branches, evaluate, save: time that is not training.
                if is_eval or is_ckpt:
                    now = time.time()
                    progress.wall_s += now - t_seg
                    self.interval.train_s += (
                        now - self.interval.resumed
                    )  # the rate: training time only
                    if is_branch:
                        self.decay_branches(step, gen, bar)
                    if is_eval:
                        self.evaluate(step, bar)
                    self.save()
                    t_seg = self.interval.resumed = time.time()

                # Stop on a signal (preemption, Ctrl-C): checkpoint if cheap, then exit.
                if self.stop_requested(step):
                    progress.wall_s += time.time() - t_seg
                    self.stop_now(step)
        finally:
            bar.close()

    def batch(self, step: int, stream, gen: torch.Generator):
        """The local batch of optimiser step ``step`` (the stream's next rows, on the device),
        with ``gen`` seeded for that step: both are functions of the step alone."""
        local_batch = self.cfg.budget.batch_size // self.ranks.world
        rows = np.fromiter((next(stream) for _ in range(local_batch)), np.int64, local_batch)
        codes, labels = self.parts.shards.gather(rows)
        codes = codes.to(self.parts.device, non_blocking=True)
        labels = labels.to(self.parts.device, non_blocking=True)
        gen.manual_seed(step_seed(self.cfg.seed, self.ranks.rank, step))
        return codes, labels

    @property
    def trained(self) -> tuple:
        """train_step's first arguments: the method, the model, its (DDP) net, AdamW, EMA."""
        parts = self.parts
        return parts.method, parts.model, parts.net, parts.opt, parts.ema

    def step_settings(self, step: int, end: int) -> dict:
        """train_step's settings at ``step`` of a run (or decay branch) that ends at ``end``."""
        optim = self.cfg.optim
        return {
            "lr": self.lr(step, end),
            "grad_clip": optim.grad_clip,
            "ema_decay": ema_decay(step, optim.ema_decay, optim.ema_warmup),
            "use_bf16": self.parts.use_bf16,
        }

    def train_at(self, step: int, end: int, stream, gen: torch.Generator) -> torch.Tensor:
        """Optimiser step ``step`` of a decay branch that ends at ``end``."""
        codes, labels = self.batch(step, stream, gen)
        return train_step(*self.trained, codes, labels, gen, **self.step_settings(step, end))

    # ------------------------------------------------------------ decay branches (wsd)
    def pending_branches(self, step: int) -> list[int]:
        """The evaluation steps whose decay branch forks at ``step`` and has no row yet."""
        done = {int(r["step"]) for r in self.rows}
        return [end for end in self.parts.branches.get(step, ()) if end not in done]

    def decay_branches(self, start: int, gen: torch.Generator, bar) -> None:
        """Every pending branch that forks at ``start``: set the state aside, train to the
        branch's end with the learning rate decaying to zero there, evaluate, restore."""
        cfg, parts, batch = self.cfg, self.parts, self.cfg.budget.batch_size
        self.sync_losses(start)
        saved = {
            "model": clone(parts.model.state_dict()),
            "ema": clone(parts.ema.state_dict()),
            "opt": clone(parts.opt.state_dict()),
        }
        for end in self.pending_branches(start):
            stream = iter(
                InfiniteSampler(
                    len(parts.shards),
                    seed=cfg.seed,
                    start=start * batch,
                    rank=self.ranks.rank,
                    world_size=self.ranks.world,
                )
            )
            t0, losses = time.time(), torch.zeros((), device=parts.device, dtype=torch.float64)
            stopped = False
            if self.ranks.main:
                self.report(
                    f"decay branch: steps {start} → {end} (learning rate to zero at "
                    f"{end}, then back to step {start})",
                    bar,
                )
            for step in range(start, end):
                losses += self.train_at(step, end, stream, gen).double()
                # ranks agree every log_every branch steps (not at steps that are multiples of
                # log_every: the fork need not be one); never on the last step, whose branch is done
                if (
                    step + 1 < end
                    and (step + 1 - start) % cfg.log_every == 0
                    and self.stop_requested(step + 1, sync=True)
                ):
                    stopped = True
                    break
            if not stopped:
                if self.ranks.world > 1:
                    dist.all_reduce(losses)
                    losses /= self.ranks.world
                loss = losses.item() / (end - start)
                if not math.isfinite(loss):
                    raise NonFiniteLossError(
                        f"non-finite loss in the decay branch from step {start} to {end}. "
                        + self.resume_hint()
                    )
                wall = self.progress.wall_s + time.time() - t0
                self.evaluate(end, bar, wall_s=wall, loss=loss, branch_from=start)
            parts.model.load_state_dict(saved["model"])
            parts.ema.load_state_dict(saved["ema"])
            parts.opt.load_state_dict(clone(saved["opt"]))
            if stopped:
                self.stop_now(start)

    # ---------------------------------------------------------------- pieces
    def sync_losses(self, step: int) -> None:
        """The losses since the last sync, summed over ranks (every rank reaches this at the
        same steps, so a non-finite loss on any rank stops all of them together)."""
        if self.pending_n == 0:
            return
        if self.ranks.world > 1:
            dist.all_reduce(self.pending)
            self.pending /= self.ranks.world
        total = self.pending.item()
        if not math.isfinite(total):
            raise NonFiniteLossError(
                f"non-finite loss between steps {self.synced_step + 1} and {step}. "
                + self.resume_hint()
            )
        self.progress.loss_sum += total
        self.progress.loss_count += self.pending_n
        self.interval.loss_sum += total
        self.interval.loss_count += self.pending_n
        self.pending = torch.zeros((), device=self.parts.device, dtype=torch.float64)
        self.pending_n = 0
        self.synced_step = step

    def evaluate(self, step: int, bar, wall_s=None, loss=None, branch_from=None) -> None:
        """Score the EMA weights at ``step``. A decay branch passes its own training wall time
        and mean loss, and the main-line step it forked from (the row's ``decay_from``)."""
        parts, progress = self.parts, self.progress
        if self.ranks.main:
            row = parts.evaluator(
                parts.ema,
                step,
                parts.total_steps,
                self.cfg.budget.batch_size,
                parts.flops_per_step,
                progress.wall_s if wall_s is None else wall_s,
                progress.mean_loss() if loss is None else loss,
            )
            # the step where this row's learning-rate decay began: its branch's fork, or the
            # main line's own decay phase (blank: constant after warm-up)
            fork = branch_from
            if fork is None and self.schedule:
                fork = decay_start(parts.total_steps, self.schedule)
            row["lr_schedule"], row["decay_from"] = self.schedule_label, fork
            self.rows.append(row)
            write_csv(self.rundir.metrics, self.rows)
            self.report(parts.evaluator.describe(row), bar)
            self.tracker.log_row(row)
            for hook in self.on_evaluation:  # e.g. the sweep's live figure (experiments/run.py)
                message = hook(self.rundir.path, row)
                if message:
                    self.report(message, bar)
        if branch_from is None:
            progress.loss_sum = 0.0
            progress.loss_count = 0
        self.ranks.barrier()

    def save(self) -> None:
        """Checkpoint the current step, unless its weights are non-finite (then stop)."""
        parts, step = self.parts, self.progress.step
        if not checkpoint.all_finite(parts.model, parts.ema):
            raise NonFiniteLossError(
                f"the weights became non-finite by step {step}; they were not saved. "
                + self.resume_hint()
            )
        t0 = time.time()
        if self.ranks.main:
            checkpoint.save(
                self.rundir.checkpoint,
                parts.model,
                parts.ema,
                parts.opt,
                self.progress,
                parts.total_steps,
                self.config,
                parts.identity,
                metrics_csv=csv_text(self.rows),
            )
        self.ranks.barrier()
        self.save_seconds = time.time() - t0
        self.checkpoint_step = step

    def resume_hint(self) -> str:
        if self.checkpoint_step is None:
            return (
                "No checkpoint was written before that; relaunch with a lower optim.lr (or "
                "check the data)."
            )
        return (
            f"The last finite checkpoint is {self.rundir.checkpoint} (step "
            f"{self.checkpoint_step}). To resume from it with a lower learning rate, relaunch "
            f"into the same directory with optim.lr=<lower> 'allow_changes=[optim.lr]' "
            f"(now optim.lr={self.cfg.optim.lr})."
        )

    def stop_requested(self, step: int, sync: bool = False) -> bool:
        """Whether to stop now. Ranks agree (an all-reduce) at steps that are multiples of
        log_every, or wherever every rank passes ``sync`` (a decay branch's own points)."""
        if self.ranks.world == 1:
            return self.stop.signum is not None
        if not sync and step % self.cfg.log_every:  # ranks agree at sync points only
            return False
        flag = torch.tensor(float(self.stop.signum or 0), device=self.parts.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        self.stop.signum = int(flag.item()) or None
        return self.stop.signum is not None

    def stop_now(self, step: int) -> None:
        """Checkpoint when cheap (not already saved, last save under 10 s), then stop."""
        saved = self.checkpoint_step == step
        # the last save's duration differs per rank (each timed its own wait): rank 0 decides
        cheap = self.ranks.decide(self.save_seconds is None or self.save_seconds < 10)
        if not saved and cheap:
            self.sync_losses(step)
            self.save()
            saved = True
        name = signal.Signals(self.stop.signum).name
        if saved:
            where = f"checkpoint at step {step}"
        elif self.checkpoint_step is not None:
            where = f"last checkpoint at step {self.checkpoint_step}"
        else:
            where = "no checkpoint yet"
        raise RunInterrupted(
            f"stopped by {name} at step {step} ({where}); relaunch the same command to resume",
            self.stop.signum,
        )
