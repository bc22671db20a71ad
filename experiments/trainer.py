"""Training + evaluation of one run (one method, one seed) at a fixed compute budget.

Called by ``experiments/run.py`` (Hydra). The run directory receives:

    .hydra/config.yaml    resolved config (written by Hydra)
    metrics.csv           one row per evaluation (rewritten atomically)
    samples/step_*.png    sample grid at each evaluation; samples_final.png
    checkpoints/last.pt   model, EMA, optimiser, RNG states, data position, counters
    summary.json          status (running | finished | failed), budget, final metrics

Matched compute: steps = floor(budget.train_flops / (3 · forward FLOPs of one global
batch)), where the forward count is the backbone's analytic ``flops`` (the heads differ:
K logits vs d channels), so every method of a sweep spends the same training FLOPs.
Evaluations happen at the same fractions of the budget for every method.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import os
import shutil
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import OmegaConf
from tqdm import tqdm

import methods
from shared.backbone import build_dit
from shared.data import InfiniteSampler
from shared.images import save_grid
from shared.io import atomic_torch_save, atomic_write_text
from shared.optim import build_adamw, clip_and_step, ema_decay, ema_update

METRIC_COLUMNS = [
    "method", "seed", "step", "total_steps", "images_seen", "train_flops", "budget_fraction",
    "wall_s", "loss", "fd_fashion", "fid_inception", "kid", "kid_std", "precision", "recall",
    "inception_score", "nfe", "nfe_rows", "sample_steps", "solver", "temperature", "cfg_scale",
    "num_samples", "extractor", "eval_s",
]  # fmt: skip


class RunError(RuntimeError):
    """A run cannot start or continue; the message says what to do."""


class NonFiniteLossError(RunError):
    pass


# ----------------------------------------------------------------------------- helpers
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def setup_distributed(device_kind: str) -> Dist:
    """torchrun (RANK/WORLD_SIZE) or submitit with several tasks → process group."""
    if "WORLD_SIZE" not in os.environ and "SLURM_NTASKS" in os.environ:
        if int(os.environ["SLURM_NTASKS"]) > 1:
            import submitit

            submitit.helpers.TorchDistributedEnvironment().export()
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def eval_steps(total: int, points: int, spacing: str) -> list[int]:
    """Steps at which to evaluate: ``points`` fractions of the budget, the last one = total."""
    if spacing == "linear":
        fracs = np.linspace(1.0 / points, 1.0, points)
    elif spacing == "log":
        fracs = np.geomspace(max(1.0 / total, 1.0 / 2 ** (points - 1)), 1.0, points)
    else:
        raise RunError(f"eval.spacing must be 'linear' or 'log', got {spacing!r}")
    return sorted({max(1, min(total, round(f * total))) for f in fracs})


def steps_for_budget(budget, flops_per_step: int) -> int:
    """Training steps a budget buys: FLOPs / (FLOPs per global step), or images / batch."""
    if budget.train_flops is not None:
        steps = int(budget.train_flops // flops_per_step)
    else:
        steps = int(budget.images // budget.batch_size)
    if steps < 1:
        raise RunError(f"the budget buys no step: one step costs {flops_per_step:.3g} FLOPs")
    return steps


def write_csv(path: str, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def read_csv(path: str) -> list[dict]:
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------ preflight
def check_inputs(cfg) -> None:
    """Fail fast (before torch-heavy work) on a missing dataset, tokenizer or bad budget."""
    b = cfg.budget
    if (b.train_flops is None) == (b.images is None):
        raise RunError(
            "set exactly one of budget.train_flops and budget.images "
            f"(got train_flops={b.train_flops}, images={b.images})"
        )
    if cfg.data.dataset == "fashion":
        from shared.data.fashion_mnist import FILES, missing_data_message, resolve_root

        root = resolve_root(cfg.data.root)
        if not all(os.path.isfile(os.path.join(root, f)) for pair in FILES.values() for f in pair):
            raise RunError(missing_data_message(root))
    elif cfg.data.dataset == "imagefolder":
        if not cfg.data.root or not os.path.isdir(cfg.data.root):
            raise RunError(
                f"data.root={cfg.data.root!r} is not a folder; point it at an ImageNet-style "
                "train folder (root/<class>/<image>)"
            )
    else:
        raise RunError(f"data.dataset must be 'fashion' or 'imagefolder', got {cfg.data.dataset!r}")
    if cfg.tokenizer.backend == "fashion-vq":
        from shared.tokenizers.fashion import FashionVQConfig, tokenizer_dir

        path = cfg.tokenizer.path or tokenizer_dir(FashionVQConfig())
        if not os.path.isfile(os.path.join(path, "tokenizer.json")):
            raise RunError(
                f"no trained Fashion-MNIST tokenizer at {path}; train it first with "
                "`python experiments/train_tokenizer.py` (≈4 min, cached) or set tokenizer.path"
            )
    elif not cfg.tokenizer.path or not os.path.exists(cfg.tokenizer.path):
        from shared.tokenizers.pretrained import LLAMAGEN_HINT, SD_HINT

        hint = SD_HINT if cfg.tokenizer.backend == "sd-vq-f8" else LLAMAGEN_HINT
        raise RunError(f"tokenizer weights {cfg.tokenizer.path!r} not found: {hint}")


def load_tokenizer(cfg):
    from shared.tokenizers import FashionVQ, load_tokenizer

    if cfg.tokenizer.backend == "fashion-vq" and cfg.tokenizer.path:
        return FashionVQ.load(cfg.tokenizer.path)
    return load_tokenizer(cfg.tokenizer.backend, cfg.tokenizer.path, cfg.tokenizer.image_size)


def prepare_latents(cfg, tok, dd: Dist):
    """Index shards of the training split (extracted once, shared by every run)."""
    from experiments.extract_latents import default_out
    from shared.data import FashionMNIST, ImageFolder
    from shared.latents import IndexShards, extract

    if cfg.data.dataset == "fashion":
        ds_id = "fashion-mnist-train"
        make = lambda: FashionMNIST(cfg.data.root, "train", size=tok.image_size)  # noqa: E731
    else:
        ds_id = f"imagefolder-{os.path.basename(os.path.normpath(cfg.data.root))}"
        make = lambda: ImageFolder(cfg.data.root, size=tok.image_size)  # noqa: E731
    folder = cfg.data.latents_dir or default_out(tok.tokenizer_id, ds_id)
    if not os.path.isfile(os.path.join(folder, "manifest.json")):
        if not cfg.data.extract_if_missing:
            raise RunError(
                f"no index shards in {folder}; run `python experiments/extract_latents.py` "
                "or set data.extract_if_missing=true"
            )
        if dd.main:
            print(f"extracting latents into {folder}")
            extract(make(), tok, folder, ds_id, progress=cfg.progress)
        dd.barrier()
    shards = IndexShards(folder)
    if shards.manifest["tokenizer_id"] != tok.tokenizer_id:
        raise RunError(f"{folder} was extracted with {shards.manifest['tokenizer_id']}, "
                       f"not {tok.tokenizer_id}; delete it or set data.latents_dir")  # fmt: skip
    return shards


def build_method_and_model(cfg, tok, device):
    """The method (with the tokenizer's codebook) and its DiT, as configured."""
    mcfg = {k: v for k, v in OmegaConf.to_container(cfg.method).items() if k != "name"}
    method = methods.build(cfg.method.name, codebook=tok.codebook.detach(), **mcfg).to(device)
    model = build_dit(
        cfg.backbone.preset, input_size=tok.grid, num_classes=cfg.data.num_classes,
        class_dropout=cfg.backbone.class_dropout, pos_embed=cfg.backbone.pos_embed,
        **method.model_kwargs(),
    ).to(device)  # fmt: skip
    return method, model


def load_trained(run_dir: str, device="cpu"):
    """(cfg, tokenizer, method, EMA model) of a run directory, for analysis scripts."""
    cfg_path = os.path.join(run_dir, ".hydra", "config.yaml")
    ckpt_path = os.path.join(run_dir, "checkpoints", "last.pt")
    for p in (cfg_path, ckpt_path):
        if not os.path.isfile(p):
            raise RunError(f"{run_dir} is not a trained run: {p} is missing")
    cfg = OmegaConf.load(cfg_path)
    tok = load_tokenizer(cfg).to(device)
    method, model = build_method_and_model(cfg, tok, device)
    ck = torch.load(ckpt_path, map_location=device, weights_only=False)
    model.load_state_dict(ck["ema"])
    return cfg, tok, method, model.eval().requires_grad_(False)


# ------------------------------------------------------------------------------- run
def set_deterministic() -> None:
    """Deterministic kernels for this process (``deterministic=true``).

    cuBLAS needs a fixed workspace for repeatable results; PyTorch reads
    CUBLAS_WORKSPACE_CONFIG when it first uses cuBLAS, so a run sets it before touching CUDA
    (an already-set value is kept). An op with no deterministic kernel warns (naming itself)
    rather than stopping a run.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def run(cfg, run_dir: str) -> dict:
    check_inputs(cfg)
    if cfg.deterministic:
        set_deterministic()
    device_kind = (
        ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    )
    dd = setup_distributed(device_kind)
    if dd.world > 1:  # every rank writes into rank 0's directory (timestamps may differ)
        holder = [run_dir]
        dist.broadcast_object_list(holder, src=0)
        run_dir = holder[0]
    device = torch.device(f"cuda:{dd.local_rank}" if device_kind == "cuda" else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    use_bf16 = cfg.optim.precision == "bf16" or (
        cfg.optim.precision == "auto" and device.type == "cuda"
    )
    os.makedirs(run_dir, exist_ok=True)
    summary_path = os.path.join(run_dir, "summary.json")
    t_start = time.time()

    tok = load_tokenizer(cfg).to(device)
    shards = prepare_latents(cfg, tok, dd)
    torch.manual_seed(cfg.seed)  # identical initialisation on every rank
    method, model = build_method_and_model(cfg, tok, device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    batch = cfg.budget.batch_size
    if batch % dd.world:
        raise RunError(f"budget.batch_size={batch} is not divisible by {dd.world} ranks")
    local_batch = batch // dd.world
    flops_per_step = model.train_flops(batch)
    total_steps = steps_for_budget(cfg.budget, flops_per_step)
    evals = eval_steps(total_steps, cfg.eval.points, cfg.eval.spacing)

    ocfg = cfg.optim
    opt = build_adamw(model.parameters(), ocfg.lr, ocfg.betas, ocfg.weight_decay, fused=ocfg.fused)
    warm = max(1, ocfg.warmup_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    net = model
    if dd.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.compile:
        net = torch.compile(net)
    gen = torch.Generator(device).manual_seed(cfg.seed * 1_000_003 + dd.rank)

    # ------------------------------------------------------------------ resume
    ckpt_path = os.path.join(run_dir, "checkpoints", "last.pt")
    metrics_path = os.path.join(run_dir, "metrics.csv")
    state = {"step": 0, "loss_sum": 0.0, "loss_count": 0, "wall_s": 0.0}
    if cfg.resume and os.path.isfile(ckpt_path):
        ck = torch.load(ckpt_path, map_location=device, weights_only=False)
        if ck["total_steps"] != total_steps or ck["method"] != cfg.method.name:
            raise RunError(f"{ckpt_path} belongs to a different run ({ck['method']}, "
                           f"{ck['total_steps']} steps); use a new run directory")  # fmt: skip
        model.load_state_dict(ck["model"])
        ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        state = ck["state"]
        torch.set_rng_state(ck["rng"]["torch"].cpu())
        gen.set_state(ck["rng"]["gen"][dd.rank].to(gen.device if device.type == "cpu" else "cpu"))
        if device.type == "cuda":
            torch.cuda.set_rng_state(ck["rng"]["cuda"][dd.rank].cpu())
        if dd.main:
            print(f"resuming {run_dir} at step {state['step']}/{total_steps}")
    rows = [r for r in read_csv(metrics_path) if int(r["step"]) <= state["step"]]

    info = {
        "method": cfg.method.name, "seed": cfg.seed, "preset": cfg.preset_name,
        "backbone": cfg.backbone.preset, "params": model.num_params(),
        "train_flops_per_step": flops_per_step, "train_flops_per_image": model.train_flops(1),
        "total_steps": total_steps, "batch_size": batch, "eval_steps": evals,
        "budget_train_flops": cfg.budget.train_flops, "budget_images": cfg.budget.images,
        "tokenizer": tok.tokenizer_id, "world_size": dd.world, "device": str(device),
    }  # fmt: skip
    if dd.main:
        atomic_write_text(summary_path, json.dumps({**info, "status": "running"}, indent=2))

    evaluator = Evaluator(cfg, tok, method, device, run_dir) if dd.main else None

    def save_checkpoint():
        gens = [gen.get_state()]
        cuda = [torch.cuda.get_rng_state()] if device.type == "cuda" else []
        if dd.world > 1:  # gather every rank's RNG so a resume is exact on all of them
            gens = [None] * dd.world
            dist.all_gather_object(gens, gen.get_state())
            if device.type == "cuda":
                cuda = [None] * dd.world
                dist.all_gather_object(cuda, torch.cuda.get_rng_state())
        if dd.main:
            atomic_torch_save({
                "model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                "sched": sched.state_dict(), "state": dict(state), "total_steps": total_steps,
                "method": cfg.method.name,
                "rng": {"torch": torch.get_rng_state(), "gen": gens, "cuda": cuda},
            }, ckpt_path)  # fmt: skip

    sampler = InfiniteSampler(len(shards), seed=cfg.seed, start=state["step"] * batch,
                              rank=dd.rank, world_size=dd.world)  # fmt: skip
    stream = iter(sampler)
    bar = tqdm(total=total_steps, initial=state["step"], disable=not (dd.main and cfg.progress),
               desc=f"{cfg.method.name} s{cfg.seed}", unit="step", dynamic_ncols=True)  # fmt: skip
    pending = torch.zeros((), device=device)  # loss sum since the last host sync
    pending_n, last_sync_step = 0, state["step"]
    t_seg = time.time()

    def sync_losses(step):
        nonlocal pending, pending_n, last_sync_step
        if pending_n == 0:
            return
        total = pending.item()
        if not math.isfinite(total):
            raise NonFiniteLossError(
                f"non-finite loss between steps {last_sync_step + 1} and {step}; the last good "
                f"checkpoint ({ckpt_path}) is kept. Lower optim.lr or check the data."
            )
        state["loss_sum"] += total
        state["loss_count"] += pending_n
        pending, pending_n, last_sync_step = torch.zeros((), device=device), 0, step

    try:
        while state["step"] < total_steps:
            rows_b = np.fromiter((next(stream) for _ in range(local_batch)), np.int64, local_batch)
            c, y = shards.gather(rows_b)
            c, y = c.to(device, non_blocking=True), y.to(device, non_blocking=True)
            model.train()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                out = method.loss(net, c, y, generator=gen)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            clip_and_step(model, opt, ocfg.grad_clip)
            sched.step()
            ema_update(ema, model, ema_decay(state["step"], ocfg.ema_decay, ocfg.ema_warmup))
            pending = pending + out.loss.detach().float()
            pending_n += 1
            state["step"] += 1
            step = state["step"]
            bar.update()
            is_eval = step in evals
            if step % cfg.log_every == 0 or is_eval or step % cfg.checkpoint_every == 0:
                sync_losses(step)
                if dd.main and cfg.progress:
                    rate = bar.format_dict.get("rate") or 0.0  # steps/s (tqdm's smoothed rate)
                    mean = state["loss_sum"] / max(1, state["loss_count"])
                    bar.set_postfix(loss=f"{mean:.4f}", img_s=f"{batch * rate:.0f}", refresh=False)
            if is_eval:
                state["wall_s"] += time.time() - t_seg
                t_seg = time.time()
                if dd.main:
                    loss = state["loss_sum"] / max(1, state["loss_count"])
                    row = evaluator(
                        ema, step, total_steps, batch, flops_per_step, state["wall_s"], loss
                    )
                    rows.append(row)
                    write_csv(metrics_path, rows)
                    bar.write(evaluator.describe(row))
                state["loss_sum"], state["loss_count"] = 0.0, 0
                dd.barrier()
                t_seg = time.time()  # evaluation time is not training wall-clock
                save_checkpoint()
            elif step % cfg.checkpoint_every == 0:
                state["wall_s"] += time.time() - t_seg
                t_seg = time.time()
                save_checkpoint()
        bar.close()
    except BaseException as e:
        bar.close()
        if dd.main:
            status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
            atomic_write_text(summary_path, json.dumps(
                {**info, "status": status, "error": f"{type(e).__name__}: {e}",
                 "step": state["step"]}, indent=2))  # fmt: skip
        raise
    summary = {
        **info, "status": "finished", "step": state["step"], "train_wall_s": state["wall_s"],
        "total_wall_s": time.time() - t_start, "final": rows[-1] if rows else None,
    }  # fmt: skip
    if dd.main:
        atomic_write_text(summary_path, json.dumps(summary, indent=2))
        if evaluator.last_grid:
            shutil.copyfile(evaluator.last_grid, os.path.join(run_dir, "samples_final.png"))
    return summary


# -------------------------------------------------------------------------- evaluation
class Evaluator:
    """Samples with the EMA model under a fixed protocol and scores them (rank 0)."""

    def __init__(self, cfg, tok, method, device, run_dir):
        from shared.metrics import build_extractor, reference_features

        self.cfg, self.tok, self.method = cfg, tok, method
        self.device, self.run_dir = device, run_dir
        e = cfg.eval
        if e.extractor not in ("fashion", "inception"):
            raise RunError(f"eval.extractor must be 'fashion' or 'inception', got {e.extractor!r}")
        dataset = ("fashion-mnist" if cfg.data.dataset == "fashion"
                   else f"imagefolder:{cfg.data.root}")  # fmt: skip
        self.extractor = build_extractor(e.extractor, device)
        self.reference = reference_features(e.extractor, dataset, split=e.reference_split,
                                            size=tok.image_size, n=e.reference_n,
                                            data_root=cfg.data.root, extractor=self.extractor,
                                            progress=cfg.progress)  # fmt: skip
        self.last_grid = None

    @torch.no_grad()
    def sample_images(self, ema, temperature=None, cfg_scale=None, trace=False):
        """The protocol's class-balanced samples as uint8 images (and the last SampleOutput)."""
        e = self.cfg.eval
        g = torch.Generator(self.device).manual_seed(e.seed)  # same noise for every method/step
        labels = torch.arange(e.num_samples, device=self.device) % self.cfg.data.num_classes
        images = []
        for i in range(0, e.num_samples, e.batch_size):
            y = labels[i : i + e.batch_size]
            out = self.method.sample(
                ema, len(y), self.tok.grid, e.steps, y=y, solver=e.solver,
                temperature=e.temperature if temperature is None else temperature,
                cfg_scale=e.cfg_scale if cfg_scale is None else cfg_scale, generator=g,
                trace=trace,
            )  # fmt: skip
            images.append(self.tok.decode(out.indices).cpu())
        return torch.cat(images), labels.cpu(), out

    def save_grid(self, images, labels, path):
        k = min(self.cfg.eval.grid_samples, len(images))
        order = torch.argsort(labels[:k], stable=True)  # one class per row block
        save_grid(images[:k][order], path, nrow=self.cfg.data.num_classes)

    def score(self, images) -> dict:
        from shared.metrics import compute_metrics

        return compute_metrics(images, self.reference, self.extractor)

    @torch.no_grad()
    def __call__(self, ema, step, total_steps, batch, flops_per_step, wall_s, loss) -> dict:
        e, t0 = self.cfg.eval, time.time()
        images, labels, out = self.sample_images(ema)
        grid_path = os.path.join(self.run_dir, "samples", f"step_{step:07d}.png")
        self.save_grid(images, labels, grid_path)
        self.last_grid = grid_path
        m = self.score(images)
        nfe, rows = out.nfe, out.nfe_rows
        kind = e.extractor
        return {
            "method": self.cfg.method.name, "seed": self.cfg.seed, "step": step,
            "total_steps": total_steps, "images_seen": step * batch,
            "train_flops": step * flops_per_step, "budget_fraction": step / total_steps,
            "wall_s": round(wall_s, 3), "loss": loss,
            "fd_fashion": m.get("fd_fashion"), "fid_inception": m.get("fid_inception"),
            "kid": m.get(f"kid_{kind}"), "kid_std": m.get(f"kid_{kind}_std"),
            "precision": m.get(f"precision_{kind}"), "recall": m.get(f"recall_{kind}"),
            "inception_score": m.get(f"is_{kind}"), "nfe": nfe, "nfe_rows": rows,
            "sample_steps": e.steps, "solver": e.solver, "temperature": e.temperature,
            "cfg_scale": e.cfg_scale, "num_samples": e.num_samples, "extractor": kind,
            "eval_s": round(time.time() - t0, 2),
        }  # fmt: skip

    def describe(self, row) -> str:
        fd = row["fd_fashion"] if row["fd_fashion"] is not None else row["fid_inception"]
        return (f"[eval] {row['method']} step {row['step']}/{row['total_steps']}: loss "
                f"{row['loss']:.4f}, FD {fd:.3f}, precision {row['precision']:.3f}, recall "
                f"{row['recall']:.3f} ({row['eval_s']:.1f} s)")  # fmt: skip
