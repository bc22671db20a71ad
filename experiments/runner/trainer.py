"""Training + evaluation of one run (one method, one seed) at a fixed compute budget.

Called by ``experiments/run.py`` (Hydra). The run directory receives:

    .hydra/config.yaml    resolved config (written by Hydra)
    metrics.csv           one row per evaluation (rewritten atomically)
    samples/step_*.png    sample grid at each evaluation; samples_final.png
    checkpoints/last.pt   model, EMA, optimiser, progress counters, config, data identity
    summary.json          status (running | finished | interrupted | failed), budget, final metrics

Matched compute: steps = floor(budget.train_flops / (3 · forward FLOPs of one global
batch)), where the forward count is the backbone's analytic ``flops`` (the heads differ:
K logits vs d channels), so every method of a sweep spends the same training FLOPs.
Evaluations happen at the same fractions of the budget for every method.

``run`` reads as its phases: checks → environment → run directory → build → restore →
train → finish. The parts live one job per file: ``checks`` (config and inputs),
``rundir`` (lock, ownership, summary), ``checkpoint`` (what a checkpoint holds, when a
relaunch may resume), ``build`` (tokenizer, shards, model), ``train_loop`` (the step and the
loop), ``evaluation`` (sampling protocol and metrics).
"""

from __future__ import annotations

import copy
import csv
import io
import os
import shutil
import sys
import time

import numpy as np
import torch
import torch.distributed as dist

from shared import precision
from shared.hardware import processor_name
from shared.io import os_error_line
from shared.latents import ShardSubset
from shared.optim import build_adamw

from . import checkpoint
from .build import (
    Dist,
    build_method_and_model,
    load_tokenizer,
    load_trained,
    prepare_latents,
    setup_distributed,
)
from .checks import check_inputs, flat_keys, ignored_options, validate
from .errors import NonFiniteLossError, RunError, RunInterrupted, RunRefused
from .evaluation import METRIC_COLUMNS, Evaluator, read_csv, write_csv
from .labels import method_label
from .metrics_file import MetricsFileError, csv_text, missing_steps, verify_rows
from .rundir import RunDir
from .tracking import Tracker, open_tracker
from .train_loop import (
    Loop,
    Parts,
    RunContext,
    StopSignals,
    TrainState,
    decay_start,
    row_anchor,
    schedule_label,
    schedule_of,
)

__all__ = [
    "run",
    "load_trained",
    "load_tokenizer",
    "eval_steps",
    "steps_for_budget",
    "Evaluator",
    "RunError",
    "RunRefused",
    "RunInterrupted",
    "NonFiniteLossError",
    "METRIC_COLUMNS",
    "build_method_and_model",
    "setup_distributed",
]


def eval_steps(total: int, points: int, spacing: str) -> list[int]:
    """Steps at which to evaluate: ``points`` fractions of the budget, the last one = total."""
    if spacing == "linear":
        fracs = np.linspace(1.0 / points, 1.0, points)
    else:  # "log" (validated)
        fracs = np.geomspace(max(1.0 / total, 1.0 / 2 ** (points - 1)), 1.0, points)
    return sorted({max(1, min(total, round(f * total))) for f in fracs})


def decay_plan(evals: list[int], total: int, fraction: float) -> tuple[list, dict]:
    """(main-line evaluations, decay branches) for evaluation steps ``evals``. Constant
    schedule (``fraction`` 0): every evaluation on the main line, no branches. wsd: the main
    line evaluates at ``total`` only; each earlier evaluation step e is the end of a branch
    that forks at decay_start(e) (several may fork at one step)."""
    if not fraction:
        return evals, {}
    branches: dict[int, list[int]] = {}
    for end in evals:
        if end < total:
            branches.setdefault(decay_start(end, fraction), []).append(end)
    return [total], branches


def steps_for_budget(budget, flops_per_step: int) -> int:
    """Training steps a budget buys: FLOPs / (FLOPs per global step), or images / batch."""
    if budget.train_flops is not None:
        steps = int(budget.train_flops // flops_per_step)
    else:
        steps = int(budget.images // budget.batch_size)
    if steps < 1:
        raise RunError(f"the budget buys no step: one step costs {flops_per_step:.3g} FLOPs")
    return steps


def set_deterministic(compiled: bool = False) -> None:
    """Deterministic kernels for this process (``deterministic=true``).

    cuBLAS needs a fixed workspace for repeatable results; PyTorch reads
    CUBLAS_WORKSPACE_CONFIG when it first uses cuBLAS, so a run sets it before touching CUDA
    (an already-set value is kept). An op with no deterministic kernel warns (naming itself)
    rather than stopping a run. ``torch.use_deterministic_algorithms`` also sets inductor's
    flag, importing inductor and dynamo (≈ 1.5 s per process on a CPU); an eager run sets
    only the kernel flag, a compiled one (``compiled``) both.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if compiled or "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:  # the same kernel flag, without importing inductor
        torch._C._set_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def environment(cfg, run_dir: str) -> tuple[Dist, torch.device, str]:
    """Process group, device, and the run directory every rank writes to."""
    if cfg.deterministic:
        set_deterministic(compiled=cfg.compile)
    kind = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    ranks = setup_distributed(kind)
    if ranks.world > 1:  # every rank writes into rank 0's directory (timestamps may differ)
        holder = [run_dir]
        dist.broadcast_object_list(holder, src=0)
        run_dir = holder[0]
    if cfg.budget.batch_size % ranks.world:
        raise RunError(
            f"budget.batch_size={cfg.budget.batch_size} is not divisible by {ranks.world} ranks"
        )
    device = torch.device(f"cuda:{ranks.local_rank}" if kind == "cuda" else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return ranks, device, run_dir


def build(cfg, ranks: Dist, device: torch.device, rundir: RunDir) -> Parts:
    """Tokenizer, verified index shards, method, DiT (+EMA, AdamW), evaluator."""
    tok = load_tokenizer(cfg).to(device)
    with torch.random.fork_rng(devices=[]):  # initial weights from the seed alone
        torch.manual_seed(cfg.seed)
        method, model = build_method_and_model(cfg, tok, device)
    try:  # a sampler setting that the tokenizer's grid rules out: before extraction, training
        method.check_sampling(cfg.eval.solver, cfg.eval.steps, tok.grid)
    except ValueError as e:
        raise RunError(f"eval.solver={cfg.eval.solver} eval.steps={cfg.eval.steps}: {e}") from None
    flops = model.train_flops(cfg.budget.batch_size)
    total = steps_for_budget(cfg.budget, flops)
    evals = eval_steps(total, cfg.eval.points, cfg.eval.spacing)
    if len(evals) < cfg.eval.points:  # known before extraction and training: say so now
        raise RunError(
            f"eval.points={cfg.eval.points} (spacing {cfg.eval.spacing}) gives only "
            f"{len(evals)} distinct evaluation steps: the budget buys {total} steps; lower "
            f"eval.points to at most {len(evals)}, or raise the budget"
        )
    evals, branches = decay_plan(evals, total, schedule_of(cfg.optim)[1])
    shards = prepare_latents(cfg, tok, ranks)
    fraction = cfg.data.get("fraction", 1.0)
    if fraction < 1:  # repeated data: a fixed subset (1.0 keeps the full split's exact stream)
        shards = ShardSubset(shards, fraction)
        if len(shards) < cfg.budget.batch_size:
            raise RunError(
                f"data.fraction={fraction} leaves {len(shards)} images, fewer than one batch "
                f"({cfg.budget.batch_size}); raise the fraction"
            )
    o = cfg.optim
    # resolved once (rank 0's hardware): ranks of one run never train in different precisions
    train_precision = ranks.decide(precision.resolve(o.precision, device.type))
    # the evaluator's reference features and baselines (hours for 50k ImageNet images) are
    # built by rank 0 before the first collective of DDP; the other ranks poll meanwhile
    evaluator = ranks.main_first(
        lambda: Evaluator(cfg, tok, method, device, rundir.path, train_precision),
        rundir.path,
        "evaluator",
    )
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = build_adamw(model.parameters(), o.lr, o.betas, o.weight_decay, fused=o.fused)
    net = model
    if ranks.world > 1:
        ids = [device.index] if device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if cfg.compile:
        net = torch.compile(net)
    return Parts(
        method=method,
        model=model,
        net=net,
        ema=ema,
        opt=opt,
        shards=shards,
        evaluator=evaluator,
        device=device,
        use_bf16=train_precision == "bf16",
        flops_per_step=flops,
        total_steps=total,
        evals=evals,
        branches=branches,
        identity={
            "tokenizer": tok.tokenizer_id,
            "shards": shards.manifest["checksum"],
            "train_precision": train_precision,
        },
    )


def describe(cfg, parts: Parts, ranks: Dist) -> dict:
    """summary.json's description of the run, with the identity of what measures it."""
    evaluation = {}
    if parts.evaluator is not None:
        evaluation = {
            "identity": parts.evaluator.identity,
            "baselines": parts.evaluator.baselines,
            "warnings": parts.evaluator.comparability_warnings(),
        }
        for w in evaluation["warnings"]:
            print(f"\n{'!' * 100}\n{w}\n{'!' * 100}\n", file=sys.stderr)
    flat = flat_keys(cfg)
    return {
        **evaluation,
        "method": method_label(cfg),
        "seed": cfg.seed,
        # what the run trains (every training key but the seed) and its digest: analysis
        # groups runs by this, not by the label, which names only some options
        "train_identity": checkpoint.training_identity(flat),
        "train_config": checkpoint.training_config(flat),
        "preset": cfg.preset_name,
        "backbone": cfg.backbone.preset,
        "params": parts.model.num_params(),
        "train_flops_per_step": parts.flops_per_step,
        "train_flops_per_image": parts.model.train_flops(1),
        "total_steps": parts.total_steps,
        "batch_size": cfg.budget.batch_size,
        "eval_steps": sorted(
            [*parts.evals, *(e for ends in parts.branches.values() for e in ends)]
        ),
        "lr_schedule": schedule_label(cfg.optim),
        # wsd: fork step → the evaluation steps whose decay branches start there
        "decay_branches": {str(k): v for k, v in sorted(parts.branches.items())},
        "budget_train_flops": cfg.budget.train_flops,
        "budget_images": cfg.budget.images,
        "tokenizer": parts.identity["tokenizer"],
        "shards": parts.identity["shards"],
        # what the shards were extracted from (shared/data/identity.py): files or listing, size
        "data_identity": parts.shards.manifest.get("data_identity"),
        "train_precision": parts.identity["train_precision"],
        "eval_precision": parts.evaluator.precision if parts.evaluator is not None else None,
        "world_size": ranks.world,
        "device": str(parts.device),
        # bitwise reproducible on the same processor only (shared/hardware.py)
        "processor": processor_name(parts.device.type, parts.device.index or 0),
        "cpu_threads": torch.get_num_threads(),
    }


def refuse_to_train_over(cfg, rundir: RunDir) -> str | None:
    """Why this launch may not start from step 0 in a directory that holds a run (rank 0,
    under the lock), or None. ``resume=false`` never trains over a run, and a run whose
    checkpoint is gone is not retrained while its summary says finished (or cannot be read)
    and it has evaluation rows, unless ``overwrite=true`` says so."""
    held = rundir.holds()
    if held is None or cfg.overwrite:
        return None
    if not cfg.resume:
        return (
            f"{rundir.path} holds {held}: resume=false would train over it; launch into "
            "another folder, or add overwrite=true to discard it"
        )
    if os.path.isfile(rundir.checkpoint):
        return None
    summary = rundir.read_summary()
    finished = (summary or {}).get("status") == "finished"
    if finished or (summary is None and rundir.metric_rows()):
        return (
            f"{rundir.checkpoint} is missing, but {rundir.path} holds {held}: restore the "
            "checkpoint to keep it, or add overwrite=true to retrain it from step 0"
        )
    return None


def load_checkpoint(cfg, rundir: RunDir, ranks: Dist) -> dict | None:
    """The checkpoint to resume, checked (digest, format). Rank 0 decides for every rank: an
    unreadable checkpoint refuses the launch, leaving the run's status as it was, unless
    ``overwrite=true`` (then every rank starts from step 0: None)."""
    saved, problem = None, None
    if ranks.main:
        try:
            saved = checkpoint.load(rundir.checkpoint)
        except checkpoint.CheckpointUnreadable as e:
            problem = str(e)
    problem = ranks.decide(problem)
    if problem is None:
        return saved if ranks.main else checkpoint.load(rundir.checkpoint)
    if cfg.overwrite:
        if ranks.main:
            print(f"warning: {problem}; overwrite=true: training from step 0", file=sys.stderr)
        return None
    finished = (rundir.read_summary() or {}).get("status") == "finished"
    kept = "the run stays finished (its metrics.csv is kept); " if finished else ""
    raise RunRefused(
        f"{problem}; {kept}restore it from a copy to resume, or add overwrite=true to retrain "
        "from step 0"
    )


def open_run_dir(
    cfg, rundir: RunDir, ranks: Dist, files: dict | None = None
) -> tuple[dict | None, dict]:
    """One writer per directory; a checkpoint there is resumed only under the same training
    config. Once the launch is accepted, rank 0 writes its .hydra ``files`` (so a launch that
    dies while building is still known by its overrides). Returns (checkpoint or None, the
    accepted config changes)."""
    refused = None
    if ranks.main:
        try:
            rundir.lock()
            refused = refuse_to_train_over(cfg, rundir)
        except RunRefused as e:  # every rank must hear of it (see Dist.decide)
            refused = str(e)
        except OSError as e:
            refused = f"cannot open the run folder: {os_error_line(e)}"
    # rank 0 locks and looks; every rank follows its answers (see Dist.decide)
    refused, resume = ranks.decide((refused, cfg.resume and os.path.isfile(rundir.checkpoint)))
    if refused is not None:
        raise RunRefused(refused)
    saved, changed = (load_checkpoint(cfg, rundir, ranks) if resume else None), {}
    if saved is not None:
        changed = checkpoint.check_resume(rundir.checkpoint, saved, cfg)
        # rank 0 reads the rows and decides (every rank must refuse, or none; see Dist.decide)
        relabel = None
        if ranks.main:
            step = saved["progress"]["step"]
            recorded = saved.get("metrics_csv")
            rows = (
                csv.DictReader(io.StringIO(recorded))
                if recorded is not None
                else read_csv(rundir.metrics)
            )
            evaluated = any(_anchor_or_none(r) is not None and row_anchor(r) <= step for r in rows)
            relabel = checkpoint.check_relabel(rundir.checkpoint, saved, cfg, evaluated)
        relabel = ranks.decide(relabel)
        if relabel is not None:
            raise RunRefused(relabel)
    if ranks.main:
        rundir.write_launch_files(files)
    return saved, changed


def _anchor_or_none(row: dict) -> int | None:
    """A row's anchor, or None for a row too damaged to have one (resumed_rows reports it)."""
    try:
        return row_anchor(row)
    except (TypeError, ValueError):
        return None


def resumed_rows(saved: dict | None, rundir: RunDir, ranks: Dist) -> list[dict]:
    """The metrics rows a resumed run keeps: those its checkpoint has passed, verified.

    A checkpoint keeps the text of metrics.csv up to its step; where the file differs (a lost
    or cut row, a damaged byte) rank 0 rewrites it from the checkpoint, the old file kept
    beside it. An older checkpoint without that copy: rank 0 checks the file's rows for form,
    and a finished run for its final row, and refuses a damaged file for every rank."""
    if saved is None:
        return []
    step = saved["progress"]["step"]
    recorded = saved.get("metrics_csv")
    if recorded is None:  # a checkpoint from before checkpoints kept their rows
        problem = None
        if ranks.main:
            problem = legacy_rows_problem(saved, rundir)
        problem = ranks.decide(problem)
        if problem is not None:
            raise RunRefused(problem)
        return [r for r in read_csv(rundir.metrics) if row_anchor(r) <= step]
    rows = list(csv.DictReader(io.StringIO(recorded)))
    if ranks.main:
        repair_metrics(rundir, rows, recorded, step)
    return rows


def legacy_rows_problem(saved: dict, rundir: RunDir) -> str | None:
    """For a checkpoint without a copy of its rows: a damaged row, or a finished checkpoint
    whose final row is missing, as one line (None: the file is usable)."""
    step, total = saved["progress"]["step"], saved.get("total_steps")
    fix = (
        "this checkpoint predates the copy of its rows that would rewrite it: restore the "
        "file from a copy, or relaunch with resume=false overwrite=true to retrain the run"
    )
    try:
        rows = [r for r in verify_rows(rundir.metrics, fix) if row_anchor(r) <= step]
    except MetricsFileError as e:
        return str(e)
    # whatever the plan, a run evaluates at its last step: a finished checkpoint has that row
    if total is not None and step >= total and missing_steps(rows, [step]):
        return (
            f"{rundir.metrics} has no row for the final evaluation at step {step}, which "
            f"{rundir.checkpoint} has passed; {fix}"
        )
    return None


def repair_metrics(rundir: RunDir, rows: list[dict], recorded: str, step: int) -> None:
    """Rewrite metrics.csv from the checkpoint's copy where the two differ (rank 0)."""
    try:
        on_disk = [r for r in verify_rows(rundir.metrics, "") if row_anchor(r) <= step]
        problem = None if csv_text(on_disk) == recorded else "its rows differ from the copy"
        lost = missing_steps(on_disk, [r["step"] for r in rows])
        if lost:
            problem = f"it has no row for step{'s' if len(lost) > 1 else ''} " + ", ".join(
                map(str, lost)
            )
    except MetricsFileError as e:
        problem = e.problem
    if problem is None:
        return
    kept = rundir.set_aside(rundir.metrics, "damaged")
    write_csv(rundir.metrics, rows)
    print(
        f"warning: {rundir.metrics}: {problem}; rewrote its {len(rows)} rows from "
        f"{rundir.checkpoint} (step {step})"
        + (f", the old file is kept as {kept}" if kept else ""),
        file=sys.stderr,
    )


def restore(cfg, parts: Parts, saved: dict | None, rundir: RunDir) -> checkpoint.Progress:
    """Weights, EMA, optimiser and counters from the checkpoint (after checking that it was
    trained on this tokenizer and these shards)."""
    if saved is None:
        return checkpoint.Progress()
    # checkpoints from before the precision was recorded: what their own setting meant then
    setting = saved["config"].get("optim.precision", "auto")
    legacy = precision.legacy_train_precision(setting, parts.device.type)
    checkpoint.check_identity(rundir.checkpoint, saved, parts.identity, {"train_precision": legacy})
    parts.model.load_state_dict(saved["model"])
    parts.ema.load_state_dict(saved["ema"])
    parts.opt.load_state_dict(saved["opt"])
    return checkpoint.Progress(**saved["progress"])


def start_launch(
    rundir: RunDir, info: dict, step: int, changed: dict, files: dict | None = None
) -> None:
    """The launch owns the directory now: keep its .hydra files as the owner's, and record it
    (and what it cleaned up) in summary.json. A launch from step 0 sets an earlier run's
    metrics.csv aside and removes its checkpoint (it may start here only when there was no
    run, or its rows are retrained identically, or under overwrite=true)."""
    removed = rundir.accept(files)
    launch = {
        "start_step": step,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "changed": changed,
        "removed_temporaries": removed,
    }
    if step == 0:
        launch["replaced"] = rundir.discard_results()
    kept = rundir.set_aside_unreadable_summary()
    if kept:
        print(
            f"warning: {rundir.summary_path} could not be read; it is kept as {kept} and a new "
            "one is started (its launch history is in the kept file)",
            file=sys.stderr,
        )
        launch["unreadable_summary_kept_as"] = kept
    info["launches"] = (rundir.read_summary() or {}).get("launches", []) + [launch]
    rundir.write_summary({**info, "status": "running", "step": step})


def error_line(e: BaseException) -> str:
    """How a stop reads in summary.json and on the console: one line."""
    if isinstance(e, OSError):
        return f"OSError: {os_error_line(e)}"
    return f"{type(e).__name__}: {e}"


def record_stop(rundir: RunDir, e: BaseException, info: dict, step: int | None) -> None:
    """summary.json after a stop: 'interrupted' (signal) or 'failed', with the reason. A
    launch that stopped before it started (``info`` empty: while building) never demotes a
    finished run: its error is recorded beside the status. A summary that cannot be written
    (the disk that stopped the run is full) is reported, not raised over the error."""
    stopped = isinstance(e, RunInterrupted | KeyboardInterrupt)
    previous = rundir.read_summary() or {}
    if not info and previous.get("status") == "finished":
        summary = {**previous, "relaunch_error": error_line(e)}
    else:
        summary = {
            **previous,
            **info,
            "status": "interrupted" if stopped else "failed",
            "error": error_line(e),
        }
    if step is not None:
        summary["step"] = step
    try:
        rundir.write_summary(summary)
    except OSError as write_error:
        print(
            f"warning: the stop could not be recorded in summary.json: "
            f"{os_error_line(write_error)}",
            file=sys.stderr,
        )


def run(
    cfg, run_dir: str, on_evaluation=(), checked: bool = False, launch_files: dict | None = None
) -> dict:
    """Train and evaluate one run into ``run_dir``; returns its summary. ``on_evaluation``:
    callables ``(run_dir, metrics row) → message or None`` run on rank 0 after each evaluation
    (the runner itself never imports the analysis layer; experiments/run.py wires it).
    ``checked``: the caller has already run ``validate`` and ``check_inputs`` on ``cfg``.
    ``launch_files``: the .hydra files of this launch (name → text), written once it owns
    the directory."""
    # checks: every config value, then the input files (seconds, before any model work)
    if not checked:
        validate(cfg)
        check_inputs(cfg)
    for warning in ignored_options(cfg):
        print(f"warning: {warning}", file=sys.stderr)
    # environment
    ranks, device, run_dir = environment(cfg, run_dir)
    rundir, t_start = RunDir(run_dir), time.time()
    info, progress = {}, None
    try:
        # run directory: lock; a relaunch resumes only an identical training config
        saved, changed = open_run_dir(cfg, rundir, ranks, launch_files)
        with StopSignals() as stop:
            # build, restore
            parts = build(cfg, ranks, device, rundir)
            progress = restore(cfg, parts, saved, rundir)
            rows = resumed_rows(saved, rundir, ranks)
            del saved
            info = describe(cfg, parts, ranks)
            if ranks.main:
                start_launch(rundir, info, progress.step, changed, launch_files)
                if progress.step:
                    print(f"resuming {run_dir} at step {progress.step}/{parts.total_steps}")
            # trackers (logger=tensorboard / wandb), on the main rank, with the run's identity
            tracker = Tracker()
            if ranks.main:
                config = {**flat_keys(cfg), "train_identity": info["train_identity"]}
                config.update({f"identity.{k}": v for k, v in parts.identity.items()})
                name = f"{method_label(cfg)}-seed{cfg.seed}"
                tracker = open_tracker(cfg.logger, run_dir, config, name, cfg.wandb_project)
            # train
            state = TrainState(progress, rows)
            loop = Loop(cfg, parts, state, RunContext(rundir, ranks, stop, tracker, on_evaluation))
            try:
                loop.run()
            finally:
                tracker.close()
        # finish
        summary = {
            **info,
            "status": "finished",
            "step": progress.step,
            "train_wall_s": progress.wall_s,
            "total_wall_s": time.time() - t_start,
            "final": rows[-1] if rows else None,
        }
        if ranks.main:
            rundir.write_summary(summary)
            if parts.evaluator.last_grid:
                shutil.copyfile(
                    parts.evaluator.last_grid, os.path.join(run_dir, "samples_final.png")
                )
        ranks.close(clean=True)
        return summary
    except BaseException as e:
        if ranks.main and not info:
            rundir.refuse()  # a launch that never started leaves the owner's .hydra as it was
        if ranks.main and rundir.locked and not isinstance(e, RunRefused):
            record_stop(rundir, e, info, progress.step if info else None)
        if isinstance(e, RunInterrupted):  # an agreed stop: every rank is at the same point
            ranks.close(clean=True)
        raise
    finally:
        rundir.release()
