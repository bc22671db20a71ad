"""The sample file of ``experiments/sample.py``: its protocol card, its shard plan and the
npz writer that assembles it.

    FILE.npz          arr_0 uint8 (N, H, W, 3), labels (N,), card (JSON text)
    FILE.json         the same card
    FILE.npz.parts/   shard k holds images [k·S, (k+1)·S), written atomically; claim-k files
                      say which launch took it
    .FILE.npz.lock    held (flock) by the one command writing FILE; names it

Image i's noise and label come from (seed, i) alone, so a shard is the same whoever samples it
and the file assembled from the shards in order, with fixed zip timestamps, is the same bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
import zipfile

import numpy as np
import torch

from shared.hardware import processor_name
from shared.io import (
    atomic_open,
    atomic_write_text,
    file_sha256,
    release_flock,
    take_flock,
)
from shared.refusal import cannot

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


def trained_precision(ck: dict) -> str:
    """The precision the checkpoint trained in (recorded since the key existed)."""
    from shared import precision

    recorded = ck.get("identity", {}).get("train_precision")
    if recorded:
        return recorded
    setting = ck.get("config", {}).get("optim.precision", "auto")
    return precision.legacy_train_precision(setting, "cpu")


def build_card(args, cfg, tok, method, model, ck, ck_path, device_type, world=1) -> dict:
    from experiments.runner.build import solver_options
    from experiments.runner.labels import method_label
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
        # the sampler's own options (MaskGIT's), only for a sampler that has any
        **({"solver_options": opts} if (opts := solver_options(cfg, solver)) else {}),
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
            "processor": processor_name(
                device_type, torch.cuda.current_device() if device_type == "cuda" else 0
            ),
        },
    }


def lock_path(out: str) -> str:
    """The lock of sample file ``out``: ``.NAME.lock`` beside it. The file stays when the
    command ends (as a run directory's ``.lock`` does); only the flock on it counts."""
    return os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.lock")


def lock_output(out: str, png_dir: str | None = None):
    """(lock, None) once this process is the one writer of ``out`` and its shard folder (the
    kernel drops the flock when the process dies; ``shared.io.release_flock`` drops it
    sooner), or (None, why): another command holds it, named by host and pid, or the folder
    (or ``png_dir``) cannot be written. A second command on the same --out would sample the
    same shards and, when the first assembled the file and removed its shard folder, die."""

    def unsupported(e):  # e.g. Lustre mounted without flock: warn, do not fail
        print(
            f"warning: cannot lock {lock_path(out)} ({e}); this file system does not support "
            "flock, so a second sampling command on this --out would not be stopped"
        )

    try:
        os.makedirs(os.path.dirname(out), exist_ok=True)
        lock, holder = take_flock(lock_path(out), unsupported)
    except OSError as e:
        return None, cannot("write", out, e)
    if lock is None:
        return None, (
            f"{out} is being written by another sampling command ({holder}); wait for it to "
            "end (or stop it), or choose another --out"
        )
    if png_dir:
        try:
            os.makedirs(png_dir, exist_ok=True)
            with tempfile.TemporaryFile(dir=png_dir):
                pass
        except OSError as e:
            release_flock(lock)
            return None, cannot("write", png_dir, e)
    return lock, None


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
    from experiments.runner.build import solver_kwargs
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
                **solver_kwargs(
                    card["method_name"], card["solver"], card.get("solver_options", {})
                ),
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
