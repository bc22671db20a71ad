"""Sample a trained run into a sample file in the ADM layout, as papers report FID-50k from.

    python experiments/sample.py RUN_DIR --num-samples 50000 --out samples.npz
    python experiments/sample.py RUN_DIR --num-samples 10000 --out s.npz --cfg-scale 1.5 \\
        --solver heun --steps 50 --temperature 0.9 --labels random --seed 1
    torchrun --nproc_per_node=8 experiments/sample.py RUN_DIR --num-samples 50000 --out s.npz

The file holds ``arr_0`` uint8 (N, H, W, 3) (greyscale repeated to 3 channels), ``labels``
(N,) and ``card``, the protocol card as JSON text; the same card is written beside it
(``FILE.json``). The card names what made the images: the run, checkpoint sha256, step and
training FLOPs, method label, tokenizer sha256, solver, steps, NFE, τ, CFG scale, label
policy, seed, weights (EMA or raw), precision and versions. Score it with
``experiments/evaluate.py``.

Reproducible by construction. Image i's noise and label come from (seed, i) alone (one
generator per image, ``methods/noise.py``), so the images do not depend on the batch size,
on how many processes share the work, or on where a killed job stopped. Work is done in
shards of ``--shard-size`` images under ``FILE.npz.parts/``, each written atomically;
a relaunch of the same command skips the finished shards (a relaunch with other settings is
refused, naming them) and the final file is assembled from the shards in order, with fixed
zip timestamps, so the same command gives the same bytes. Under torchrun rank r starts with
shards r, r + world, … and then takes any shard no rank has claimed (an exclusive file create),
so a relaunch's owed shards spread over every rank; rank 0 assembles the file (the ranks share
a file system). One command writes a sample file at a time: rank 0 holds a ``flock`` on
``.FILE.npz.lock`` (it dies with its holder), so a second command on the same --out is refused
at once, naming the first's host and pid, as is an --out whose folder cannot be written.
Ranks wait for each other by polling the shard folder, never in a collective, so no wait runs into
NCCL's timeout however long a shard or the assembly takes.

On SLURM: ``--launcher slurm --partition P --gpus-per-node G [--nodes N --timeout-min T]``
submits the same command as a submitit job (one task per GPU, the ranks as under torchrun);
on a timeout or preemption submitit requeues it and the relaunch skips the finished shards.
``--launcher local`` does the same through submitit's local executor (tests, laptops).

Defaults: the run's own evaluation settings (``eval.solver``, ``eval.steps``,
``eval.temperature``, ``eval.cfg_scale``), its last checkpoint, the EMA weights, fp32
sampling, labels drawn uniformly per image from (seed, i), as DiT's, SiT's, LlamaGen's and
ADM's sampling scripts draw them (``--labels balanced``: image i has label i mod C, MAR's and
VAR's 50 per class).
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid

import torch

from experiments import sample_files as files
from shared.io import file_sha256, release_flock
from shared.refusal import cannot, refuse


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("run", help="a run directory (holds checkpoints/last.pt)")
    ap.add_argument("--num-samples", type=int, required=True)
    ap.add_argument("--out", required=True, help="the sample file (.npz)")
    ap.add_argument("--checkpoint", default=None, help="default: RUN/checkpoints/last.pt")
    ap.add_argument("--weights", choices=("ema", "raw"), default="ema")
    ap.add_argument("--solver", default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--temperature", type=float, default=None)
    ap.add_argument("--cfg-scale", type=float, default=None)
    # random: DiT's, SiT's, LlamaGen's and ADM's sample scripts draw each label uniformly;
    # balanced (image i has label i mod C) is MAR's and VAR's 50 per class
    ap.add_argument("--labels", choices=("random", "balanced"), default="random")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=None, help="default: the run's eval batch")
    ap.add_argument("--shard-size", type=int, default=1000, help="images per resumable shard")
    ap.add_argument("--precision", choices=("fp32", "bf16", "auto"), default="fp32")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--png-dir", default=None, help="also write every image as a PNG here")
    ap.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    sl = ap.add_argument_group("submitit (SLURM) launch")
    sl.add_argument("--launcher", choices=("none", "slurm", "local"), default="none")
    sl.add_argument("--partition", default=None)
    sl.add_argument("--nodes", type=int, default=1)
    sl.add_argument("--gpus-per-node", type=int, default=0)
    sl.add_argument("--cpus-per-task", type=int, default=4)
    sl.add_argument("--mem-gb", type=int, default=32)
    sl.add_argument("--timeout-min", type=int, default=240)
    sl.add_argument("--max-requeues", type=int, default=20)
    sl.add_argument("--log-dir", default=None, help="default: FILE.npz.submitit/")
    args = ap.parse_args(argv)
    for key in ("num_samples", "shard_size", "batch_size", "steps"):
        v = getattr(args, key)
        if v is not None and v < 1:
            ap.error(f"--{key.replace('_', '-')} must be ≥ 1, got {v}")
    if args.temperature is not None and args.temperature < 0:
        ap.error(f"--temperature must be ≥ 0, got {args.temperature}")
    if args.cfg_scale is not None and args.cfg_scale < 0:
        ap.error(f"--cfg-scale must be ≥ 0, got {args.cfg_scale}")
    if not args.out.endswith(".npz"):
        ap.error(f"--out must name a .npz file, got {args.out!r}")
    return args


class SampleJob:
    """The sampling command as a submitit job; a requeue (timeout, preemption) reruns the
    same command, which resumes from the finished shards."""

    def __init__(self, argv: list[str]):
        self.argv = argv

    def __call__(self):
        return main(self.argv)

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(SampleJob(self.argv))


def strip_launcher(argv: list[str]) -> list[str]:
    """The command line without its submitit options (what each task runs)."""
    flags = {
        "--launcher",
        "--partition",
        "--nodes",
        "--gpus-per-node",
        "--cpus-per-task",
        "--mem-gb",
        "--timeout-min",
        "--max-requeues",
        "--log-dir",
    }
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a.split("=", 1)[0] in flags:
            skip = "=" not in a
        else:
            out.append(a)
    return out


def submit(args, argv: list[str]):
    import submitit

    folder = args.log_dir or os.path.abspath(args.out) + ".submitit"
    ex = submitit.AutoExecutor(folder=folder, cluster="local" if args.launcher == "local" else None)
    tasks = max(1, args.gpus_per_node)
    params = {"timeout_min": args.timeout_min, "tasks_per_node": tasks, "nodes": args.nodes}
    if args.launcher == "slurm":
        params.update(
            slurm_partition=args.partition,
            gpus_per_node=args.gpus_per_node or None,
            cpus_per_task=args.cpus_per_task,
            mem_gb=args.mem_gb,
            slurm_max_num_timeout=args.max_requeues,
        )
    elif args.gpus_per_node:
        params["gpus_per_node"] = args.gpus_per_node
    ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
    job = ex.submit(SampleJob(strip_launcher(argv)))
    print(f"submitted sampling job {job.job_id} (logs in {folder}); waiting for it")
    results = job.results()
    return next((r for r in results if r is not None), None)


def main(argv=None) -> dict | None:
    from experiments.runner.build import setup_distributed

    argv = list(sys.argv[1:] if argv is None else map(str, argv))
    args = parse_args(argv)
    if args.launcher != "none":
        return submit(args, argv)
    kind = args.device
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    ranks = setup_distributed(kind)
    device = torch.device(f"cuda:{ranks.local_rank}" if kind == "cuda" else "cpu")

    # 0. The output: rank 0 holds its lock until the end (one command writes a sample file),
    # and its folder takes files; both refused before any checkpoint is read.
    out = os.path.abspath(args.out)
    lock, why = files.lock_output(out, args.png_dir) if ranks.main else (None, None)
    why = ranks.decide(why)
    if why:
        ranks.close(True)
        refuse(why)
    try:
        return sample_into(args, ranks, device, out)
    except OSError as e:  # the output's folder filled up or was taken away mid-way
        refuse(cannot("write", e.filename or out, e) + " (the finished shards are kept)")
    finally:
        if lock is not None:
            release_flock(lock)


def sample_into(args, ranks, device, out: str) -> dict | None:
    """Phases 1–4 of ``main``, into ``out``, whose lock rank 0 holds."""
    # 1. Load: the checkpoint every rank samples, and the card that names what made the images.
    tok, method, model, card = load(args, ranks, device)

    # 2. Plan: rank 0 compares the file and its shards with the card, every rank follows.
    parts = out + ".parts"
    state, why = ranks.decide(files.start(out, parts, card) if ranks.main else None)
    if state != "sample":
        ranks.close(True)
        if state == "refuse":
            refuse(why)
        if ranks.main:
            print(f"{out} is complete (same settings); nothing to do")
        return None
    ranges = files.shard_ranges(args.num_samples, args.shard_size)
    launch = ranks.decide(uuid.uuid4().hex)  # this launch's claims (a relaunch's are its own)

    # 3. Sample: the shards this rank claims, each written atomically.
    sample_shards(args, ranks, tok, method, model, card, parts, ranges, launch, device)

    # 4. Assemble: rank 0, once every shard is on disk; the others wait for its flag.
    # No rank waits in a collective: one shard at ImageNet scale (10–40 min) and the assembly
    # of a 50k file outlast NCCL's 10-minute timeout. Rank 0 polls the folder for every shard,
    # then assembles (and deletes the shard folder); the others poll main_first's flag, whose
    # token was agreed before sampling.
    def gather_and_assemble():
        files.wait_for_shards(parts, ranges, ranks.rank)
        return files.assemble(out, parts, card, args.png_dir)

    final = ranks.main_first(
        gather_and_assemble, os.path.dirname(out), f"assembly-{os.path.basename(out)}", token=launch
    )
    if ranks.main:
        print(
            f"wrote {out} ({args.num_samples} images, NFE {final['nfe']}) and its card "
            f"{out[:-4]}.json"
        )
    ranks.close(True)
    return final


def load(args, ranks, device):
    """The trained model and its card, refused if the checkpoint is unfinished (unless asked
    for), changed while it loaded, or not the same bytes on every rank."""
    from experiments.runner.build import load_trained
    from experiments.runner.errors import RunError

    try:
        ck_path = args.checkpoint or os.path.join(args.run, "checkpoints", "last.pt")
        # hashed before and after the load: a checkpoint rewritten meanwhile is refused, so the
        # digest the ranks compare below is the one of the bytes each rank loaded
        before = file_sha256(ck_path) if os.path.isfile(ck_path) else None
        cfg, tok, method, model, ck = load_trained(
            args.run, device, args.checkpoint, args.weights, with_checkpoint=True
        )
        step = int(ck["progress"]["step"])
        total = int(ck["total_steps"])
        if args.checkpoint is None and step < total:
            raise ValueError(
                f"{args.run} is unfinished (its last checkpoint is at step {step} of {total}): "
                "relaunch its training to finish it, or pass --checkpoint to sample that "
                "intermediate checkpoint on purpose (the card records its step)"
            )
        card = files.build_card(
            args, cfg, tok, method, model, ck, ck_path, device.type, ranks.world
        )
        if card["checkpoint_sha256"] != before:
            raise ValueError(
                f"{ck_path} changed while it was being loaded; sample a checkpoint "
                "that no job is writing"
            )
    except (ValueError, FileNotFoundError, RunError) as e:
        refuse(str(e))
    except OSError as e:  # unreadable (permissions, a failing disk): named, not a traceback
        refuse(cannot("read", e.filename or args.run, e))
    # every rank must sample the same weights (a checkpoint rewritten between the ranks' loads,
    # or ranks that see different file systems, would mix two models in one file)
    digests = ranks.gather(card["checkpoint_sha256"])
    if len(set(digests)) > 1:
        refuse(
            f"the ranks loaded different checkpoints ({ck_path}: sha256 "
            f"{', '.join(d[:12] for d in digests)} on ranks 0…{ranks.world - 1}); "
            "sample a checkpoint that no job is writing"
        )
    return tok, method, model, card


def sample_shards(args, ranks, tok, method, model, card, parts, ranges, launch, device) -> None:
    """Rank r starts with shards r, r + world, …, then takes any shard nobody has claimed: a
    relaunch that owes only the last shards spreads them over every rank."""
    from shared.progress import progress_bar

    done = sum(files.shard_done(files.shard_path(parts, k), *ranges[k]) for k in range(len(ranges)))
    if ranks.main:
        print(
            f"sampling {args.num_samples} images of {card['method']} (step {card['step']}, "
            f"{card['solver']} × {card['steps']}, τ={card['temperature']}, "
            f"CFG {card['cfg_scale']}) in {len(ranges)} shards over {ranks.world} process(es); "
            f"{done} of the {len(ranges)} shards already done"
        )
    order = sorted(range(len(ranges)), key=lambda k: (k % ranks.world != ranks.rank, k))
    bar = progress_bar(
        total=len(ranges) - done, desc=f"shards[rank {ranks.rank}]", disable=not args.progress
    )
    for k in order:
        lo, hi = ranges[k]
        path = files.shard_path(parts, k)
        if files.shard_done(path, lo, hi) or not files.claim(parts, launch, k):
            continue
        blob = files.sample_shard(method, model, tok, card, lo, hi, card["batch_size"], device)
        files.write_npz(path, blob)
        bar.update()
    bar.close()


if __name__ == "__main__":
    main()
