"""Building a run's parts from its config: process group, tokenizer, index shards, method
and DiT — and the same for a finished run, for the analysis scripts (:func:`load_trained`)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch.distributed as dist
from omegaconf import OmegaConf

import methods
from methods.options import options_of
from methods.records import record
from shared.backbone import build_dit

from . import checkpoint
from .errors import RunError


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

    def close(self, clean: bool) -> None:
        """Leave the process group explicitly. A rank whose interpreter exits with the group
        alive can abort in gloo's teardown ("terminate called without an active exception",
        SIGABRT), and torchrun then fails the whole launch; so ranks that ended cleanly meet
        in a last barrier, then destroy the group. After an error that may be one rank's, the
        group is left alone (a teardown could wait on a dead peer; the launch fails anyway)."""
        if clean and self.world > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

    def decide(self, value):
        """Rank 0's ``value``, on every rank.

        A decision that gates a collective ("do I extract, then wait in a barrier?", "is
        there a checkpoint to resume?") is made once and shared, never re-derived per rank from
        the file system or a clock: ranks that start at different speeds would otherwise see
        different answers and enter different collectives (gloo aborts, NCCL hangs)."""
        if self.world == 1:
            return value
        holder = [value if self.main else None]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def gather(self, value) -> list:
        """Every rank's ``value``, in rank order, on every rank."""
        if self.world == 1:
            return [value]
        out = [None] * self.world
        dist.all_gather_object(out, value)
        return out

    def main_first(
        self, work, folder: str, name: str, poll_s: float = 1.0, token: str | None = None
    ):
        """``work()`` on rank 0 (its result; None elsewhere) while the other ranks wait by
        polling a file in ``folder`` (shared by all ranks), never in a collective: building a
        50k-image reference set, or a baseline at ImageNet scale, outlasts NCCL's collective
        timeout. A failure on rank 0 is told to the others, which fail too."""
        if self.world == 1:
            return work()
        import time
        import uuid

        # the flag's token: agreed now (a collective), or earlier by the caller (``token``),
        # when the ranks may reach this point minutes apart
        token = token or self.decide(uuid.uuid4().hex)
        flag = os.path.join(folder, f".{name}-{token}.done")
        if self.main:
            try:
                result = work()
            except BaseException as e:
                _write_flag(flag, f"rank 0 failed: {type(e).__name__}: {e}")
                raise
            _write_flag(flag, "ok")
        else:
            result, t0, told = None, time.time(), time.time()
            while not os.path.isfile(flag):
                if time.time() - told >= 60:
                    print(
                        f"[rank {self.rank}] waiting for rank 0's {name} "
                        f"({time.time() - t0:.0f} s so far)"
                    )
                    told = time.time()
                time.sleep(poll_s)
            with open(flag) as f:
                status = f.read()
            if status != "ok":
                raise RunError(f"{name}: {status}")
        self.barrier()  # every rank is here now: a short wait
        if self.main:
            os.remove(flag)
        return result


def _write_flag(path: str, text: str) -> None:
    from shared.io import atomic_write_text

    atomic_write_text(path, text)


def setup_distributed(device_kind: str) -> Dist:
    """torchrun (RANK/WORLD_SIZE) or submitit with several tasks → process group."""
    if "WORLD_SIZE" not in os.environ and "SLURM_NTASKS" in os.environ:
        if int(os.environ["SLURM_NTASKS"]) > 1:
            import submitit

            submitit.helpers.TorchDistributedEnvironment().export()
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world <= 1:
        return Dist()
    if device_kind == "cuda":  # before any collective: NCCL's object collectives use it
        import torch

        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


# downsampling factor of each pretrained backend (its grid is image_size / factor)
DOWNSAMPLING = {"sd-vq-f8": 8, "llamagen-vq-ds8": 8}


def load_tokenizer(cfg):
    """The configured tokenizer; ``tokenizer.path`` unset = the shipped Fashion-MNIST one. A
    file that does not load as the backend, or loads with another downsampling factor (a
    3-level VQModel is f4, not f8), is a RunError naming both (before any data or model)."""
    from shared.artifacts import ArtifactError
    from shared.safe_load import FileLoadError
    from shared.tokenizers import load_tokenizer

    t = cfg.tokenizer
    try:
        tok = load_tokenizer(t.backend, t.path, t.image_size)
    except (FileLoadError, FileNotFoundError, ArtifactError) as e:
        raise RunError(str(e)) from None
    except Exception as e:  # noqa: BLE001 (a wrong layout fails in many ways: say which file)
        raise RunError(
            f"tokenizer.path={t.path} does not load as tokenizer.backend={t.backend} "
            f"({type(e).__name__}: {str(e)[:300]}); is it the {t.backend} checkpoint?"
        ) from None
    factor = DOWNSAMPLING.get(t.backend)
    size = tok.image_size
    if factor and tuple(tok.grid) != (size // factor, size // factor):
        raise RunError(
            f"tokenizer.path={t.path} downsamples {size} px to a {tok.grid[0]}x{tok.grid[1]} "
            f"grid (factor {size // tok.grid[0]}), but tokenizer.backend={t.backend} means "
            f"factor {factor} ({size // factor}x{size // factor}); give a {t.backend} model"
        )
    return tok


def shard_location(cfg, tok) -> tuple[str, dict, str]:
    """(dataset id, data identity, shard folder) of the run's training split."""
    from shared.data.sources import data_source, shard_folder

    ds_id, identity, _ = data_source(cfg.data.dataset, cfg.data.root, "train", tok.image_size)
    return ds_id, identity, shard_folder(cfg.data.latents_dir, tok.tokenizer_id, ds_id)


def prepare_latents(cfg, tok, ranks: Dist):
    """Index shards of the training split (extracted once, shared by every run of the same
    data), verified: the data's identity (``shared/data/identity.py``), checksums, the grid,
    and index/label ranges, naming the shard on failure."""
    from shared.data import ImageFolderError
    from shared.latents import IndexShards, ShardError

    # rank 0 reads the data's identity (one pass over the folder's listing) and looks for the
    # shards; every rank follows: all of them reach the barrier below, or none does
    found = None
    if ranks.main:
        try:
            ds_id, identity, folder = shard_location(cfg, tok)
            found = (ds_id, identity, folder, os.path.isfile(os.path.join(folder, "manifest.json")))
        except (ImageFolderError, OSError) as e:
            found = f"data.root={cfg.data.root}: {e}"
    found = ranks.decide(found)
    if isinstance(found, str):
        raise RunError(found)
    ds_id, identity, folder, present = found
    if not present:
        if not cfg.data.extract_if_missing:
            raise RunError(
                f"no index shards in {folder}; run `python experiments/extract_latents.py` "
                "or set data.extract_if_missing=true"
            )
        try:
            extract_once(cfg, tok, ranks, folder, ds_id, identity)
        except (ShardError, ImageFolderError) as e:  # e.g. an image that cannot be decoded
            raise RunError(f"extracting {cfg.data.root} into {folder}: {e}") from None
    try:
        shards = IndexShards(
            folder,
            verify=True,
            num_classes=cfg.data.num_classes,
            progress=cfg.progress and ranks.main,
            identity=identity,
        )
    except ShardError as e:
        raise RunError(str(e)) from None
    if shards.manifest["tokenizer_id"] != tok.tokenizer_id:
        raise RunError(
            f"{folder} was extracted with {shards.manifest['tokenizer_id']}, "
            f"not {tok.tokenizer_id}; delete it or set data.latents_dir"
        )
    if tuple(shards.manifest["grid"]) != tuple(tok.grid):
        raise RunError(
            f"{folder} holds a {shards.manifest['grid']} latent grid, this tokenizer makes "
            f"{list(tok.grid)}; delete it or set data.latents_dir"
        )
    return shards


def extract_once(cfg, tok, ranks: Dist, folder: str, ds_id: str, identity: dict) -> None:
    """Extract the shards once, whoever asks, not once per job of a sweep.

    The first job takes ``<folder>.lock`` and extracts, its shards dealt over all of its
    ranks; any other job waiting for the same data polls for the manifest instead of
    extracting again. Every wait is a file poll, never a collective: an extraction takes
    hours at ImageNet scale, far past NCCL's collective timeout."""
    from shared.data.sources import open_dataset
    from shared.latents import ExtractionLock, extract, wait_for_manifest

    lock = ExtractionLock(folder)
    mine = lock.acquire() if ranks.main else None
    got, holder = ranks.decide((mine is True, None if mine is True else mine))
    say = print if ranks.main else None
    if not got:
        if say:
            print(f"{folder} is being extracted by {holder}; waiting for it")
        wait_for_manifest(folder, lock, holder, say=say)
        return
    try:
        if ranks.main:
            print(f"extracting latents into {folder} over {ranks.world} rank(s)")
        # the identity came from rank 0 (computed once); here only the images are opened
        dataset = open_dataset(cfg.data.dataset, cfg.data.root, "train", tok.image_size)
        extract(
            dataset,
            tok,
            folder,
            ds_id,
            rank=ranks.rank,
            world_size=ranks.world,
            progress=cfg.progress and ranks.main,
            identity=identity,
        )
        wait_for_manifest(folder, say=say)  # the other ranks' shards (the last one writes it)
    finally:
        lock.release()


def solver_options(cfg, solver: str) -> dict:
    """The sampler's own options from the config (MaskGIT's: ``eval.maskgit``) as a plain
    dict, or {} for a sampler without any."""
    cls = record(cfg.method.name).solver_options.get(solver)
    if cls is None:
        return {}
    return {
        f.name: OmegaConf.select(cfg, f"eval.{solver}.{f.name}", default=f.default)
        for f in options_of(cls)
    }


def solver_kwargs(method_name: str, solver: str, values: dict) -> dict:
    """What ``Method.sample`` takes for those options: ``{"solver_options": …}`` or {}."""
    cls = record(method_name).solver_options.get(solver)
    return {"solver_options": cls(**values)} if cls is not None else {}


def build_method_and_model(cfg, tok, device):
    """The method (with the tokenizer's codebook) and its DiT, as configured."""
    mcfg = {k: v for k, v in OmegaConf.to_container(cfg.method).items() if k != "name"}
    method = methods.build(cfg.method.name, codebook=tok.codebook.detach(), **mcfg).to(device)
    model = build_dit(
        cfg.backbone.preset,
        input_size=tok.grid,
        num_classes=cfg.data.num_classes,
        class_dropout=cfg.backbone.class_dropout,
        pos_embed=cfg.backbone.pos_embed,
        **method.model_kwargs(),
    ).to(device)
    return method, model


def unflatten(flat: dict) -> dict:
    tree: dict = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def _shipped_as(run_dir: str) -> str | None:
    """The shipped run a run folder was unpacked from (its summary.json says), or None."""
    try:
        with open(os.path.join(run_dir, "summary.json")) as f:
            return json.load(f).get("shipped_as")
    except (OSError, ValueError, AttributeError):
        return None


def load_trained(
    run_dir: str,
    device="cpu",
    path: str | None = None,
    weights: str = "ema",
    with_checkpoint: bool = False,
):
    """(cfg, tokenizer, method, model) of a run directory, for analysis and sampling: the EMA
    weights (``weights="raw"``: the trained ones) of ``path`` (default: the run's last
    checkpoint); with ``with_checkpoint``, the loaded checkpoint dict is appended.

    The config is the one stored in the checkpoint (what the weights were trained with), not
    whatever a later launch left in ``.hydra/``."""
    if weights not in ("ema", "raw"):
        raise ValueError(f"weights must be 'ema' or 'raw', got {weights!r}")
    path = path or os.path.join(run_dir, "checkpoints", "last.pt")
    if not os.path.isfile(path):
        raise RunError(f"{run_dir} is not a trained run: {path} is missing")
    shipped = _shipped_as(run_dir)
    fix = (
        f"unpack it again with python experiments/shipped_runs.py --out {os.path.dirname(run_dir)}"
        if shipped
        else "restore it from a copy, or retrain the run"
    )
    try:
        ck = checkpoint.load(path, map_location=device)
    except checkpoint.CheckpointUnreadable as e:
        raise RunError(f"{e}; {fix}") from None
    if shipped and "digest" not in ck:  # unpacked before checkpoints carried their sha256
        raise RunError(
            f"{path} is an unpacked copy of {shipped} that cannot be verified (unpacked by an "
            f"older version, without a digest); {fix}"
        )
    cfg = OmegaConf.create(unflatten(ck["config"]))
    tok = load_tokenizer(cfg).to(device)
    method, model = build_method_and_model(cfg, tok, device)
    model.load_state_dict(ck["ema" if weights == "ema" else "model"])
    out = (cfg, tok, method, model.eval().requires_grad_(False))
    return (*out, ck) if with_checkpoint else out
