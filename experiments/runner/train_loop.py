"""The training loop: the loop decides *when* (log, evaluate, checkpoint, stop); the step
and the checkpoint decide *how*.

Randomness and learning rate are functions of the step, so a resumed run continues exactly
as an uninterrupted one, whatever else the process built (or drew random numbers for) first:

    generator of step s = seeded from (seed, rank, s)      time, noise, corruption, class dropout
    lr(s)               = optim.lr · min(1, (s+1)/warmup) · decay(s)
    data rows of step s = positions s·B … (s+1)·B−1 of the seeded stream (InfiniteSampler)

``Loop.run`` reads as its phases, once per step: train → report → decay branches, evaluate,
save → stop if asked. The learning-rate schedule and the decay branches of
``optim.schedule=wsd`` live in ``experiments/runner/wsd.py``.
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
from .wsd import Schedule, run_branches
from .wsd import decay_start as decay_start
from .wsd import lr_at as lr_at
from .wsd import row_anchor as row_anchor
from .wsd import schedule_label as schedule_label
from .wsd import schedule_of as schedule_of


def step_seed(seed: int, rank: int, step: int) -> int:
    """A 63-bit seed for (run seed, rank, step); distinct triples give unrelated streams."""
    digest = hashlib.sha256(f"vqbench/{seed}/{rank}/{step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@dataclass
class Trained:
    """What one optimiser step updates: the method (its loss), the model, the model as the
    forward pass runs it (DDP / torch.compile), the optimiser and the EMA copy."""

    method: object
    model: torch.nn.Module
    net: torch.nn.Module
    opt: object  # shared.optim.FusedAdamW or a torch.optim.Optimizer (optim.fused=false)
    ema: torch.nn.Module


@dataclass(frozen=True)
class StepSettings:
    """The settings of one optimiser step: learning rate, gradient-norm clip, EMA decay and
    whether the forward pass runs in bf16 autocast."""

    lr: float
    grad_clip: float
    ema_decay: float
    use_bf16: bool


def optimizer_step(
    trained: Trained, c: torch.Tensor, y: torch.Tensor, gen: torch.Generator, settings: StepSettings
) -> torch.Tensor:
    """One optimiser step (the trainer's and the benchmark's): class dropout and the method's
    loss drawn from ``gen``, AdamW at ``settings.lr`` with clipping, then the EMA. Returns the
    loss (detached, on device: no host sync)."""
    model, opt = trained.model, trained.opt
    model.train()
    y = model.drop_labels(y, gen)
    with torch.autocast(c.device.type, dtype=torch.bfloat16, enabled=settings.use_bf16):
        out = trained.method.loss(trained.net, c, y, generator=gen)
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    for group in opt.param_groups:
        group["lr"] = settings.lr
    clip_and_step(model, opt, settings.grad_clip)
    ema_update(trained.ema, model, settings.ema_decay)
    return out.loss.detach().float()


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

    def agree(self, device: torch.device) -> bool:
        """Whether any rank was signalled (an all-reduce: every rank calls it at the same
        point); each rank then holds the signal."""
        flag = torch.tensor(float(self.signum or 0), device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        self.signum = int(flag.item()) or None
        return self.signum is not None


@dataclass
class Parts(Trained):
    """What the loop works on, built by ``experiments/runner/trainer.py``."""

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
class TrainState:
    """Where training stands, updated in place (the trainer reads both after the loop): the
    counters a checkpoint holds, and the metrics rows so far."""

    progress: checkpoint.Progress
    rows: list


@dataclass
class RunContext:
    """Where the loop runs and reports: the run folder (run.log, metrics.csv, checkpoint), the
    process group (build.Dist), the stop flag, the trackers (TensorBoard / W&B on the main
    rank), and callables (run_dir, row) → message or None called after each evaluation."""

    rundir: object
    ranks: object
    stop: StopSignals
    tracker: Tracker = field(default_factory=Tracker)
    on_evaluation: tuple = ()


class Losses:
    """The loss of the steps since it was last read. Summed on the device in float64 without a
    host sync: exact for float32 losses, so a mean does not depend on where syncs fell (a
    resumed run syncs at other steps). ``sync`` brings the sum to the host, averaged over
    ranks (every rank syncs at the same steps); ``mean`` hands back the mean of what was
    synced since the last mean."""

    def __init__(self, device: torch.device, ranks):
        self.device, self.ranks = device, ranks
        self.sum, self.count = 0.0, 0  # synced, since the last mean
        self._clear()

    def _clear(self) -> None:
        self.pending = torch.zeros((), device=self.device, dtype=torch.float64)
        self.pending_n = 0

    def add(self, loss: torch.Tensor) -> None:
        self.pending = self.pending + loss.double()
        self.pending_n += 1

    def sync(self) -> tuple[float, int]:
        """(sum, count) of the losses since the last sync; (0.0, 0) without any."""
        if self.pending_n == 0:
            return 0.0, 0
        if self.ranks.world > 1:
            dist.all_reduce(self.pending)
            self.pending /= self.ranks.world
        total, n = self.pending.item(), self.pending_n
        self.sum += total
        self.count += n
        self._clear()
        return total, n

    def mean(self) -> float:
        """The mean of the synced losses since the last call (nan without any)."""
        mean = self.sum / self.count if self.count else float("nan")
        self.sum, self.count = 0.0, 0
        return mean


class StepData:
    """What optimiser step s draws, a function of s alone: its rows of the seeded data stream
    (this rank's share of the global batch, on the device) and its generator's seed."""

    def __init__(self, shards, seed: int, batch_size: int, ranks, device: torch.device):
        self.shards, self.seed, self.batch_size = shards, seed, batch_size
        self.ranks, self.device = ranks, device

    def stream(self, step: int):
        """This rank's rows of the stream, from optimiser step ``step`` on."""
        ranks, start = self.ranks, step * self.batch_size
        sampler = InfiniteSampler(len(self.shards), self.seed, start, ranks.rank, ranks.world)
        return iter(sampler)

    def batch(self, step: int, stream, gen: torch.Generator):
        """The local batch of step ``step`` (the stream's next rows), with ``gen`` seeded."""
        local_batch = self.batch_size // self.ranks.world
        rows = np.fromiter((next(stream) for _ in range(local_batch)), np.int64, local_batch)
        codes, labels = self.shards.gather(rows)
        codes = codes.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        gen.manual_seed(step_seed(self.seed, self.ranks.rank, step))
        return codes, labels


class Clock:
    """Training seconds, with evaluations, decay branches and checkpoints left out: added to
    the run's ``wall_s`` at each pause, and counted since the last log line for its
    throughput."""

    def __init__(self, progress: checkpoint.Progress, step: int):
        self.progress = progress
        self.lap_s, self.lap_step = 0.0, step
        self.resume()

    def resume(self) -> None:
        self.since = self.lap_since = time.time()

    def pause(self) -> None:
        now = time.time()
        self.progress.wall_s += now - self.since
        self.lap_s += now - self.lap_since

    def lap(self, step: int) -> float:
        """Steps per second of training since the last lap; starts the next."""
        seconds = self.lap_s + (time.time() - self.lap_since)
        rate = (step - self.lap_step) / seconds if seconds > 0 else 0.0
        self.lap_s, self.lap_step, self.lap_since = 0.0, step, time.time()
        return rate


def step_bar(cfg, total: int, step: int, main: bool):
    """The progress bar over the run's steps (on the main rank, under ``progress=true``)."""
    return progress_bar(
        total=total,
        initial=step,
        unit="step",
        dynamic_ncols=True,
        desc=f"{method_label(cfg)} s{cfg.seed}",
        disable=not (main and cfg.progress),
    )


def log_line(step: int, total: int, batch_size: int, values: dict, rate: float) -> str:
    """step, images, FLOPs, loss, lr, throughput and ETA (at ``rate`` steps/s), as one line."""
    eta = datetime.timedelta(seconds=round((total - step) / rate)) if rate else "?"
    return (
        f"step {step}/{total} ({100 * step / total:.0f}%) | images "
        f"{step * batch_size:,} | train FLOPs {values['train/flops']:.3g} | "
        f"loss {values['train/loss']:.4f} | lr {values['train/lr']:.3g} "
        f"| {values['train/images_per_s']:.1f} img/s | ETA {eta}"
    )


def resume_hint(checkpoint_path: str, checkpoint_step: int | None, lr: float) -> str:
    """The way back from non-finite numbers: the last finite checkpoint and a lower lr."""
    if checkpoint_step is None:
        return (
            "No checkpoint was written before that; relaunch with a lower optim.lr (or "
            "check the data)."
        )
    return (
        f"The last finite checkpoint is {checkpoint_path} (step "
        f"{checkpoint_step}). To resume from it with a lower learning rate, relaunch "
        f"into the same directory with optim.lr=<lower> 'allow_changes=[optim.lr]' "
        f"(now optim.lr={lr})."
    )


class Loop:
    """Runs ``parts`` from ``state.progress.step`` to ``total_steps``; see the module docstring."""

    def __init__(self, cfg, parts: Parts, state: TrainState, context: RunContext):
        self.cfg, self.parts = cfg, parts
        self.progress, self.rows = state.progress, state.rows
        self.rundir, self.ranks, self.stop = context.rundir, context.ranks, context.stop
        self.tracker, self.on_evaluation = context.tracker, context.on_evaluation
        self.schedule = Schedule(cfg.optim, parts.total_steps, parts.branches)
        batch = cfg.budget.batch_size
        self.data = StepData(parts.shards, cfg.seed, batch, self.ranks, parts.device)
        self.losses = self.new_losses()  # the log line's
        self.checkpoint_step = self.progress.step or None  # the last finite checkpoint on disk
        self.save_seconds: float | None = None
        self.config = flat_keys(cfg)

    def run(self) -> None:
        cfg, parts, progress = self.cfg, self.parts, self.progress
        stream, gen = self.data.stream(progress.step), torch.Generator(parts.device)
        self.bar = step_bar(cfg, parts.total_steps, progress.step, self.ranks.main)
        self.clock = Clock(progress, progress.step)
        try:
            # Resumed at a fork whose decay branches a stop cut short: run them first.
            if self.schedule.pending(progress.step, self.rows):
                run_branches(self, progress.step, gen)
                self.save()
                self.clock.resume()
            while progress.step < parts.total_steps:
                # Train one step: its batch, then method.loss, backward, AdamW and EMA.
                self.losses.add(self.train_at(progress.step, parts.total_steps, stream, gen))
                progress.step += 1
                self.bar.update()
                step = progress.step
                forks = bool(self.schedule.pending(step, self.rows))
                is_eval = step in parts.evals
                is_ckpt = step % cfg.checkpoint_every == 0 or forks

                # Report: the mean loss since the last line, throughput, ETA.
                if step % cfg.log_every == 0 or is_eval or is_ckpt:
                    self.sync_losses(step)
                    self.show_progress()
                    if self.ranks.main and step % cfg.log_every == 0:
                        self.log(step)

                # Decay branches, evaluate, save: time that is not training.
                if is_eval or is_ckpt:
                    self.clock.pause()
                    if forks:
                        run_branches(self, step, gen)
                    if is_eval:
                        self.evaluate(step)
                    self.save()
                    self.clock.resume()

                # Stop on a signal (preemption, Ctrl-C): checkpoint if cheap, then exit.
                if self.stop_requested(step):
                    self.clock.pause()
                    self.stop_now(step)
        finally:
            self.bar.close()

    # ---------------------------------------------------------------- the step
    def train_at(self, step: int, end: int, stream, gen: torch.Generator) -> torch.Tensor:
        """Optimiser step ``step`` of the main run (``end``: the budget) or of a decay branch
        that ends at ``end``."""
        codes, labels = self.data.batch(step, stream, gen)
        optim = self.cfg.optim
        lr, ema = self.schedule.lr(step, end), ema_decay(step, optim.ema_decay, optim.ema_warmup)
        settings = StepSettings(lr, optim.grad_clip, ema, self.parts.use_bf16)
        return optimizer_step(self.parts, codes, labels, gen, settings)

    # ---------------------------------------------------------------- losses and reports
    def new_losses(self) -> Losses:
        return Losses(self.parts.device, self.ranks)

    def non_finite(self, what: str) -> NonFiniteLossError:
        """The stop for non-finite numbers, with the way back (a lower learning rate)."""
        hint = resume_hint(self.rundir.checkpoint, self.checkpoint_step, self.cfg.optim.lr)
        return NonFiniteLossError(f"{what}. {hint}")

    def sync_losses(self, step: int) -> None:
        """The losses since the last sync (every rank reaches this at the same steps, so a
        non-finite loss on any rank stops all of them together), into the counters since the
        last evaluation."""
        total, n = self.losses.sync()
        if n:
            if not math.isfinite(total):
                raise self.non_finite(f"non-finite loss between steps {step - n + 1} and {step}")
            self.progress.loss_sum += total
            self.progress.loss_count += n

    def show_progress(self) -> None:
        """The progress bar's loss (since the last evaluation) and images/s."""
        if self.ranks.main and self.cfg.progress:
            rate = self.bar.format_dict.get("rate") or 0.0  # steps/s (tqdm's smoothed)
            images = self.cfg.budget.batch_size * rate
            loss = self.progress.mean_loss()
            self.bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{images:.0f}", refresh=False)

    def log(self, step: int) -> None:
        """The log line (a cluster job without progress bars still prints it, and writes
        run.log, every log_every steps): the mean loss since the last line, learning rate,
        training throughput (training time only; evaluations come on top), FLOPs so far."""
        cfg, total = self.cfg, self.parts.total_steps
        rate = self.clock.lap(step)  # steps/s
        values = {
            "train/loss": self.losses.mean(),
            "train/lr": self.schedule.lr(step - 1, total),
            "train/images_per_s": cfg.budget.batch_size * rate,
            "train/flops": float(step * self.parts.flops_per_step),
        }
        line = log_line(step, total, cfg.budget.batch_size, values, rate)
        self.report(line, echo=not cfg.progress)
        self.tracker.log(step, values)

    def report(self, line: str, echo: bool = True) -> None:
        """One status line: to run.log in the run folder (every line), and to the console
        above the progress bar when ``echo``."""
        if echo:
            self.bar.write(line)
        with open(os.path.join(self.rundir.path, "run.log"), "a") as f:
            f.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {line}\n")

    # ---------------------------------------------------------------- evaluate, save, stop
    def evaluate(self, step: int, wall_s=None, loss=None, branch_from=None) -> None:
        """Score the EMA weights at ``step``. A decay branch passes its own training wall time
        and mean loss, and the main-line step it forked from (the row's ``decay_from``)."""
        parts, progress = self.parts, self.progress
        if self.ranks.main:
            wall_s = progress.wall_s if wall_s is None else wall_s
            loss = progress.mean_loss() if loss is None else loss
            batch, flops = self.cfg.budget.batch_size, parts.flops_per_step
            row = parts.evaluator(parts.ema, step, parts.total_steps, batch, flops, wall_s, loss)
            row["lr_schedule"], row["decay_from"] = self.schedule.row_labels(branch_from)
            self.rows.append(row)
            write_csv(self.rundir.metrics, self.rows)
            self.report(parts.evaluator.describe(row))
            self.tracker.log_row(row)
            for hook in self.on_evaluation:  # e.g. the sweep's live figure (experiments/run.py)
                message = hook(self.rundir.path, row)
                if message:
                    self.report(message)
        if branch_from is None:
            progress.loss_sum = 0.0
            progress.loss_count = 0
        self.ranks.barrier()

    def save(self) -> None:
        """Checkpoint the current step, unless its weights are non-finite (then stop)."""
        parts, step = self.parts, self.progress.step
        if not checkpoint.all_finite(parts.model, parts.ema):
            raise self.non_finite(
                f"the weights became non-finite by step {step}; they were not saved"
            )
        t0 = time.time()
        if self.ranks.main:
            checkpoint.save(
                self.rundir.checkpoint,
                model=parts.model,
                ema=parts.ema,
                opt=parts.opt,
                progress=self.progress,
                total_steps=parts.total_steps,
                config=self.config,
                identity=parts.identity,
                metrics_csv=csv_text(self.rows),
            )
        self.ranks.barrier()
        self.save_seconds = time.time() - t0
        self.checkpoint_step = step

    def stop_requested(self, step: int, sync: bool = False) -> bool:
        """Whether to stop now. Ranks agree (an all-reduce) at steps that are multiples of
        log_every, or wherever every rank passes ``sync`` (a decay branch's own points)."""
        if self.ranks.world == 1:
            return self.stop.signum is not None
        if not sync and step % self.cfg.log_every:  # ranks agree at sync points only
            return False
        return self.stop.agree(self.parts.device)

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
