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
a file system). Ranks wait for each other by polling that folder, never in a collective, so
no wait runs into NCCL's timeout however long a shard or the assembly takes.

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
import contextlib
import hashlib
import json
import os
import platform
import shutil
import sys
import time
import uuid
import zipfile

import numpy as np
import torch

from shared.io import atomic_open, atomic_write_text, file_sha256

CARD_VERSION = 1


class NpzWriter:
    """An uncompressed .npz that ``np.load`` reads, written atomically entry by entry, with
    fixed zip timestamps (``np.savez`` stamps the current time, so its bytes differ run to
    run). An entry may arrive in chunks along its first axis (``add_chunks``), so the images
    of a 50k-sample file are streamed from the shards, never held in memory at once."""

    def __init__(self, path: str):
        self.path = path

    def __enter__(self):
        self._stack = contextlib.ExitStack()
        f = self._stack.enter_context(atomic_open(self.path, "wb"))
        self.zf = self._stack.enter_context(zipfile.ZipFile(f, "w", zipfile.ZIP_STORED))
        return self

    def __exit__(self, *exc):
        return self._stack.__exit__(*exc)

    def add(self, name: str, value) -> None:
        value = np.asanyarray(value)
        self.add_chunks(name, value.shape, value.dtype, [value])

    def add_chunks(self, name: str, shape, dtype, chunks) -> None:
        """Entry ``name`` of ``shape`` and ``dtype`` from arrays that stack along axis 0."""
        info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
        info.external_attr = 0o644 << 16
        header = np.lib.format.header_data_from_array_1_0(np.empty((0, *shape[1:]), dtype))
        header["shape"] = tuple(shape)
        rows = 0
        with self.zf.open(info, "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, header)
            for chunk in chunks:
                chunk = np.ascontiguousarray(chunk, dtype=dtype)
                if chunk.shape[1:] != tuple(shape[1:]):
                    raise ValueError(f"{name}: a chunk of shape {chunk.shape} for {tuple(shape)}")
                rows += len(chunk) if chunk.ndim else 1
                f.write(chunk.data)
        if rows != (shape[0] if len(shape) else 1):
            raise ValueError(f"{name}: {rows} rows written for shape {tuple(shape)}")


def write_npz(path: str, arrays: dict) -> None:
    """The arrays (name → array) as an .npz (see :class:`NpzWriter`)."""
    with NpzWriter(path) as w:
        for name, value in arrays.items():
            w.add(name, value)


def read_npz(path: str, keys=None) -> dict:
    """The entries ``keys`` (default: all) of an .npz; np.load reads only what is asked."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in (z.files if keys is None else keys)}


def to_adm(images: torch.Tensor) -> np.ndarray:
    """uint8 (B, C, h, w) with C ∈ {1, 3} → uint8 (B, h, w, 3), greyscale repeated."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(
            f"expected uint8 (B, 1|3, h, w) images, got {images.dtype} {tuple(images.shape)}"
        )
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return images.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def labels_for(indices, num_classes: int, policy: str, seed: int) -> torch.Tensor:
    """Image i's label: i mod C (``balanced``) or a draw from (seed, i) alone (``random``)."""
    from methods.noise import sample_seed

    if policy == "balanced":
        return torch.tensor([int(i) % num_classes for i in indices], dtype=torch.long)
    draws = []
    for i in indices:
        g = torch.Generator().manual_seed(sample_seed(seed, int(i), "label"))
        draws.append(int(torch.randint(0, num_classes, (1,), generator=g)))
    return torch.tensor(draws, dtype=torch.long)


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


def trained_precision(ck: dict) -> str:
    """The precision the checkpoint trained in (recorded since the key existed)."""
    from shared import precision

    recorded = ck.get("identity", {}).get("train_precision")
    if recorded:
        return recorded
    setting = ck.get("config", {}).get("optim.precision", "auto")
    return precision.legacy_train_precision(setting, "cpu")


def build_card(args, cfg, tok, method, model, ck, ck_path, device_type, world=1) -> dict:
    from experiments.runner.checks import method_label
    from shared import precision

    e = cfg.eval
    solver = args.solver or e.solver
    steps = args.steps or e.steps
    temperature = e.temperature if args.temperature is None else args.temperature
    cfg_scale = e.cfg_scale if args.cfg_scale is None else args.cfg_scale
    method.check_sampling(solver, steps, tok.grid)
    method.check_temperature(temperature)
    if cfg_scale != 1.0 and not cfg.backbone.class_dropout > 0:
        raise ValueError(
            f"--cfg-scale {cfg_scale} needs a trained null class; this run has "
            "backbone.class_dropout=0"
        )
    from omegaconf import OmegaConf

    label_cfg = OmegaConf.merge(cfg, {"eval": {"solver": solver}})  # the sampler actually used
    progress = ck["progress"]
    return {
        "card_version": CARD_VERSION,
        "run": os.path.abspath(args.run),
        "checkpoint": os.path.abspath(ck_path),
        "checkpoint_sha256": file_sha256(ck_path),
        "step": int(progress["step"]),
        "total_steps": int(ck["total_steps"]),
        "train_flops": int(progress["step"]) * int(model.train_flops(cfg.budget.batch_size)),
        "method": method_label(label_cfg),
        "method_name": cfg.method.name,
        "seed_of_run": int(cfg.seed),
        "tokenizer": cfg.tokenizer.backend,
        "tokenizer_sha256": tok.weights_sha256,
        "grid": list(tok.grid),
        "image_size": int(tok.image_size),
        "num_classes": int(cfg.data.num_classes),
        "weights": args.weights,
        "solver": solver,
        "steps": int(steps),
        "temperature": float(temperature),
        "cfg_scale": float(cfg_scale),
        "labels": args.labels,
        "seed": int(args.seed),
        "num_samples": int(args.num_samples),
        "shard_size": int(args.shard_size),
        "precision": precision.resolve(args.precision, device_type),
        # images depend on the batch (batched kernels round differently) and the device; not
        # on the world size (image i's noise and label come from (seed, i) alone)
        "batch_size": int(args.batch_size or cfg.eval.batch_size),
        "device": device_type,
        "world_size": int(world),
        "train_precision": trained_precision(ck),
        "tf32": precision.fp32_without_tf32(
            device_type, precision.resolve(args.precision, device_type)
        ),
        "versions": {
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
    }


def shard_ranges(n: int, size: int) -> list[tuple[int, int]]:
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def shard_path(parts: str, k: int) -> str:
    return os.path.join(parts, f"shard_{k:06d}.npz")


def shard_done(path: str, lo: int, hi: int) -> bool:
    """A finished, readable shard of the right size (a torn or foreign one is redone)."""
    if not os.path.isfile(path):
        return False
    try:  # the index alone (a torn file fails to open; the images are not read)
        z = read_npz(path, ["index"])
        return list(z["index"]) == list(range(lo, hi))
    except Exception:  # noqa: BLE001 (any unreadable file is simply redone)
        return False


@torch.no_grad()
def sample_shard(method, model, tok, card, lo, hi, batch_size, device) -> dict:
    from methods.noise import PerSample
    from shared import precision

    images, labels, nfe = [], [], set()
    for s in range(lo, hi, batch_size):
        idx = list(range(s, min(s + batch_size, hi)))
        y = labels_for(idx, card["num_classes"], card["labels"], card["seed"]).to(device)
        gen = PerSample(card["seed"], idx)
        with precision.autocast(device.type, card["precision"]):
            out = method.sample(
                model,
                len(idx),
                tok.grid,
                card["steps"],
                y=y,
                solver=card["solver"],
                temperature=card["temperature"],
                cfg_scale=card["cfg_scale"],
                generator=gen,
            )
        images.append(to_adm(tok.decode(out.indices)))
        labels.append(y.cpu().numpy())
        nfe.add((out.nfe, out.nfe_rows))
    (n, rows), *rest = sorted(nfe)
    if rest:
        raise RuntimeError(f"NFE differs between batches: {sorted(nfe)}")
    return {
        "arr_0": np.concatenate(images),
        "labels": np.concatenate(labels).astype(np.int64),
        "index": np.arange(lo, hi, dtype=np.int64),
        "nfe": np.array([n, rows]),
    }


def claim(parts: str, launch: str, k: int) -> bool:
    """Take shard ``k`` for this rank in launch ``launch`` (an exclusive create on the shared
    file system); False when another rank of this launch took it first. Claims of earlier
    launches are ignored: their ranks are gone, their unfinished shards are owed again."""
    folder = os.path.join(parts, "claims", launch)
    os.makedirs(folder, exist_ok=True)
    try:
        os.close(os.open(os.path.join(folder, str(k)), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def wait_for_shards(parts: str, ranges, rank: int, poll_s: float = 1.0) -> None:
    """Until every shard is written (by any rank), polling; says every minute what it waits
    for. A rank that died leaves its claimed shard unwritten: torchrun and SLURM end the
    launch, and the relaunch samples it again."""
    t0 = told = time.time()
    missing = list(range(len(ranges)))
    while True:
        missing = [k for k in missing if not shard_done(shard_path(parts, k), *ranges[k])]
        if not missing:
            return
        if time.time() - told >= 60:
            print(
                f"[rank {rank}] waiting for {len(missing)} shard(s) of other ranks "
                f"({', '.join(map(str, missing[:8]))}…; {time.time() - t0:.0f} s so far)",
                flush=True,
            )
            told = time.time()
        time.sleep(poll_s)


# card keys a relaunch may change without changing a single image
CARD_FREE = ("versions", "world_size")


def card_changes(old: dict, card: dict) -> str:
    """The settings in which two cards differ ("" when they agree; versions may differ)."""
    keys = sorted(k for k in card if k not in CARD_FREE and old.get(k) != card.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} → {card.get(k)!r}" for k in keys)


def start(out: str, parts: str, card: dict) -> tuple[str, str | None]:
    """Rank 0's look at the output: ("done", None) when ``out`` is already this card's file,
    ("sample", None) after creating or checking the shard folder, or ("refuse", why)."""
    if os.path.isfile(out) and not os.path.isdir(parts):
        with np.load(out, allow_pickle=False) as z:
            diff = card_changes(json.loads(str(z["card"])), card)
        if diff:
            return "refuse", f"{out} exists with other settings ({diff}); choose another --out"
        return "done", None
    os.makedirs(parts, exist_ok=True)
    path = os.path.join(parts, "card.json")
    if os.path.isfile(path):
        with open(path) as f:
            diff = card_changes(json.load(f), card)
        if diff:
            return "refuse", (
                f"{parts} holds shards of other settings ({diff}); use the same "
                "settings, another --out, or delete that folder"
            )
    else:
        atomic_write_text(path, json.dumps(card, indent=1))
    return "sample", None


def assemble(out: str, parts: str, card: dict, png_dir: str | None) -> dict:
    count = len(shard_ranges(card["num_samples"], card["shard_size"]))
    paths = [shard_path(parts, k) for k in range(count)]
    small = [read_npz(p, ["nfe", "labels"]) for p in paths]
    nfe = {tuple(int(v) for v in b["nfe"]) for b in small}
    if len(nfe) != 1:
        raise RuntimeError(f"NFE differs between shards: {sorted(nfe)}")
    ((n, rows),) = nfe
    final = {**card, "nfe": n, "nfe_rows": rows}
    size = card["image_size"]
    digest = hashlib.sha256()

    def images():  # one shard in memory at a time
        for i, p in enumerate(paths):
            shard = read_npz(p, ["arr_0"])["arr_0"]
            digest.update(shard.tobytes())
            if png_dir:
                from PIL import Image

                os.makedirs(png_dir, exist_ok=True)
                first = i * card["shard_size"]
                for j, im in enumerate(shard):
                    Image.fromarray(im).save(os.path.join(png_dir, f"{first + j:06d}.png"))
            yield shard

    with NpzWriter(out) as w:
        w.add_chunks("arr_0", (card["num_samples"], size, size, 3), np.uint8, images())
        w.add("labels", np.concatenate([b["labels"] for b in small]))
        final["arr_0_sha256"] = digest.hexdigest()
        text = json.dumps(final, indent=1, sort_keys=True)
        w.add("card", np.array(text))
    atomic_write_text(out[: -len(".npz")] + ".json", text + "\n")
    shutil.rmtree(parts)
    return final


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
    from experiments.runner.build import load_trained, setup_distributed
    from experiments.runner.errors import RunError
    from shared.progress import progress_bar

    argv = list(sys.argv[1:] if argv is None else map(str, argv))
    args = parse_args(argv)
    if args.launcher != "none":
        return submit(args, argv)
    kind = (
        args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    ranks = setup_distributed(kind)
    device = torch.device(f"cuda:{ranks.local_rank}" if kind == "cuda" else "cpu")
    try:
        ck_path = args.checkpoint or os.path.join(args.run, "checkpoints", "last.pt")
        # hashed before and after the load: a checkpoint rewritten meanwhile is refused, so the
        # digest the ranks compare below is the one of the bytes each rank loaded
        before = file_sha256(ck_path) if os.path.isfile(ck_path) else None
        cfg, tok, method, model, ck = load_trained(
            args.run, device, args.checkpoint, args.weights, with_checkpoint=True
        )
        step, total = int(ck["progress"]["step"]), int(ck["total_steps"])
        if args.checkpoint is None and step < total:
            raise ValueError(
                f"{args.run} is unfinished (its last checkpoint is at step {step} of {total}): "
                "relaunch its training to finish it, or pass --checkpoint to sample that "
                "intermediate checkpoint on purpose (the card records its step)"
            )
        card = build_card(args, cfg, tok, method, model, ck, ck_path, device.type, ranks.world)
        if card["checkpoint_sha256"] != before:
            raise ValueError(
                f"{ck_path} changed while it was being loaded; sample a checkpoint "
                "that no job is writing"
            )
    except (ValueError, FileNotFoundError, RunError) as e:
        raise SystemExit(f"error: {e}") from None
    # every rank must sample the same weights (a checkpoint rewritten between the ranks' loads,
    # or ranks that see different file systems, would mix two models in one file)
    digests = ranks.gather(card["checkpoint_sha256"])
    if len(set(digests)) > 1:
        raise SystemExit(
            f"error: the ranks loaded different checkpoints ({ck_path}: sha256 "
            f"{', '.join(d[:12] for d in digests)} on ranks 0…{ranks.world - 1}); "
            "sample a checkpoint that no job is writing"
        )
    batch = card["batch_size"]
    out = os.path.abspath(args.out)
    parts = out + ".parts"
    # rank 0 looks at the files, every rank follows (Dist.decide): no rank can take another
    # path through the barriers below
    state, why = ranks.decide(start(out, parts, card) if ranks.main else None)
    if state != "sample":
        ranks.close(True)
        if state == "refuse":
            raise SystemExit(f"error: {why}")
        if ranks.main:
            print(f"{out} is complete (same settings); nothing to do")
        return None
    ranges = shard_ranges(args.num_samples, args.shard_size)
    launch = ranks.decide(uuid.uuid4().hex)  # this launch's claims (a relaunch's are its own)
    done = sum(shard_done(shard_path(parts, k), *ranges[k]) for k in range(len(ranges)))
    if ranks.main:
        print(
            f"sampling {args.num_samples} images of {card['method']} (step {card['step']}, "
            f"{card['solver']} × {card['steps']}, τ={card['temperature']}, "
            f"CFG {card['cfg_scale']}) in {len(ranges)} shards over {ranks.world} process(es); "
            f"{done} of the {len(ranges)} shards already done"
        )
    # rank r starts with shards r, r + world, …, then takes any shard nobody has claimed: a
    # relaunch that owes only the last shards spreads them over every rank
    order = sorted(range(len(ranges)), key=lambda k: (k % ranks.world != ranks.rank, k))
    bar = progress_bar(
        total=len(ranges) - done, desc=f"shards[rank {ranks.rank}]", disable=not args.progress
    )
    for k in order:
        lo, hi = ranges[k]
        if shard_done(shard_path(parts, k), lo, hi) or not claim(parts, launch, k):
            continue
        blob = sample_shard(method, model, tok, card, lo, hi, batch, device)
        write_npz(shard_path(parts, k), blob)
        bar.update()
    bar.close()

    # no rank waits in a collective: one shard at ImageNet scale (10–40 min) and the assembly of
    # a 50k file outlast NCCL's 10-minute timeout. Rank 0 polls the folder for every shard, then
    # assembles (and deletes the shard folder); the others poll main_first's flag, whose token
    # was agreed before sampling
    def gather_and_assemble():
        wait_for_shards(parts, ranges, ranks.rank)
        return assemble(out, parts, card, args.png_dir)

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


if __name__ == "__main__":
    main()
