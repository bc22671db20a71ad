"""Index shards: a dataset encoded once by a tokenizer, read memory-mapped by training.

Layout of an extraction folder::

    plan.json                      what is being extracted (tokenizer, dataset, shard size)
    shard_00000.indices.npy        (n, H, W) uint16 (uint32 when K > 65536)
    shard_00000.labels.npy         (n,) int32
    shard_00000.json               count, sha256 — written last: the shard's commit marker
    manifest.json                  tokenizer id, K, grid, count, checksum — once all are done

Every file is written atomically, so an interrupted extraction keeps its finished shards
and redoes the one it was in. Shards are dealt round-robin to ``world_size`` workers
(SLURM array tasks or DDP ranks), so workers never write the same file.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import numpy as np
import torch

from .io import atomic_open, atomic_write_text, release_flock, take_flock
from .progress import progress_bar


class ShardError(ValueError):
    pass


class ExtractionLock:
    """``<folder>.lock``: held (flock) by the one job extracting into ``folder``, so that
    concurrent jobs of a sweep (a SLURM array, submitit, pack.py) wait for it instead of
    extracting the same data again. The kernel drops it when its holder dies, so a waiter
    can tell a finished extraction (manifest written) from an abandoned one (lock free, no
    manifest)."""

    def __init__(self, folder: str):
        self.path = os.path.normpath(folder) + ".lock"
        self._file = None

    def acquire(self) -> bool | str:
        """True if this process holds the lock now (or the file system has no flock); else
        a description of the holder."""
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        self._file, holder = take_flock(self.path)
        return True if holder is None else holder

    def held_elsewhere(self) -> bool:
        """Whether another process holds the lock (taken and dropped at once if free)."""
        got = self.acquire()
        if got is True:
            self.release()
            return False
        return True

    def release(self) -> None:
        if self._file is not None:
            release_flock(self._file)
            self._file = None


def wait_for_manifest(
    folder: str,
    lock: ExtractionLock | None = None,
    holder: str = "",
    poll_s: float = 2.0,
    say=print,
) -> None:
    """Block until ``folder``'s manifest.json exists, without any collective (so ranks and
    jobs can wait for hours). With ``lock``: fail (ShardError) when its holder is gone and
    the manifest is still missing (the holder writes the manifest before it lets go, so the
    lock is checked first)."""
    manifest, t0, told = os.path.join(folder, "manifest.json"), time.time(), 0.0
    while not os.path.isfile(manifest):
        if lock is not None and not lock.held_elsewhere() and not os.path.isfile(manifest):
            raise ShardError(
                f"the extraction into {folder} by {holder} stopped before it finished; "
                "relaunch (finished shards are kept), or run `python experiments/"
                "extract_latents.py` first"
            )
        if say and time.time() - told >= 60:
            say(
                f"waiting for the extraction into {folder} by {holder or 'other ranks'} "
                f"({time.time() - t0:.0f} s so far)"
            )
            told = time.time()
        time.sleep(poll_s)


def _sha256(*arrays: np.ndarray, chunk: int = 1 << 16) -> str:
    """sha256 of the arrays' bytes in order, read ``chunk`` rows at a time (memory-mapped
    shards are never copied whole)."""
    h = hashlib.sha256()
    for a in arrays:
        for i in range(0, len(a), chunk):
            h.update(np.ascontiguousarray(a[i : i + chunk]).tobytes())
    return h.hexdigest()


def _save_npy(path: str, array: np.ndarray) -> None:
    with atomic_open(path, "wb") as f:
        np.save(f, array)


def shard_paths(out_dir: str, s: int) -> tuple[str, str, str]:
    base = os.path.join(out_dir, f"shard_{s:05d}")
    return base + ".indices.npy", base + ".labels.npy", base + ".json"


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _shard_done(out_dir: str, s: int, count: int) -> bool:
    idx_p, lbl_p, meta_p = shard_paths(out_dir, s)
    meta = _read_json(meta_p)
    if not meta or meta.get("count") != count:
        return False
    try:
        idx, lbl = np.load(idx_p, mmap_mode="r"), np.load(lbl_p, mmap_mode="r")
    except (OSError, ValueError):
        return False
    return len(idx) == len(lbl) == count and _sha256(idx, lbl) == meta["sha256"]


MAX_BATCH = 500  # the batch every extraction used before it was chosen from memory


def activation_bytes_per_image(tokenizer, device=None) -> int:
    """Memory one image takes while ``tokenizer`` encodes it (bytes).

    CUDA: measured, the allocator's peak at batch 2 minus its peak at batch 1. Elsewhere (no
    allocator statistics): an upper bound, the sum of every leaf module's output during a
    batch-1 encode (under no_grad most are freed before the next one is made, so the real
    peak is lower; attention's internal scores are not counted, a few MB per image at 256 px).
    Measured: about 160 MB per image for SD vq-f8 at 256 px."""
    device = torch.device(device or tokenizer.codebook.device)
    shape = (tokenizer.channels, tokenizer.image_size, tokenizer.image_size)
    probe = lambda b: torch.zeros((b, *shape), dtype=torch.uint8)  # noqa: E731
    if device.type == "cuda":
        peaks = []
        for b in (1, 2):
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            tokenizer.encode(probe(b))
            peaks.append(torch.cuda.max_memory_allocated(device))
        return max(1, peaks[1] - peaks[0])
    total = [0]

    def count(_module, _inputs, out):
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                total[0] += t.numel() * t.element_size()

    leaves = [m for m in tokenizer.modules() if not any(True for _ in m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        tokenizer.encode(probe(1))
    finally:
        for h in hooks:
            h.remove()
    return max(1, total[0])


def available_memory(device) -> int:
    """Bytes free for activations: CUDA's free memory, else the host's MemAvailable."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def auto_batch_size(
    tokenizer, device=None, budget_bytes: int | None = None, fraction: float = 0.5
) -> int:
    """The largest extraction batch whose activations fit in ``fraction`` of the free memory
    (or in ``budget_bytes``), between 1 and :data:`MAX_BATCH`. At 32 px (Fashion) that is
    always MAX_BATCH, so those shards are the ones every earlier version wrote."""
    device = torch.device(device or tokenizer.codebook.device)
    per_image = activation_bytes_per_image(tokenizer, device)
    budget = budget_bytes if budget_bytes is not None else fraction * available_memory(device)
    return int(min(MAX_BATCH, max(1, budget // per_image)))


def _encode_fitting(tokenizer, images: torch.Tensor, state: dict) -> torch.Tensor:
    """``tokenizer.encode(images)`` in pieces of at most ``state["batch"]``; a CUDA
    out-of-memory halves that batch (kept for the rest of the extraction) and retries."""
    out, i = [], 0
    while i < len(images):
        b = state["batch"]
        try:
            out.append(tokenizer.encode(images[i : i + b]).cpu())
        except torch.cuda.OutOfMemoryError:
            if b == 1:
                raise
            state["batch"] = b // 2
            torch.cuda.empty_cache()
            print(f"out of memory at an extraction batch of {b}; going on with {b // 2}")
            continue
        i += b
    return torch.cat(out)


def extract(
    dataset,
    tokenizer,
    out_dir: str,
    dataset_id: str,
    shard_size: int = 10000,
    batch_size: int | str = "auto",
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    identity: dict | None = None,
) -> dict | None:
    """Encode ``dataset`` ((image uint8, label) pairs) into index shards.

    ``identity`` (``shared.data.identity``): what the dataset is, recorded in the plan and the
    manifest, so a reader can refuse shards of other data. ``batch_size="auto"``: chosen
    from memory (:func:`auto_batch_size`); the batch can change float rounding in the
    encoder, never which images go where. Returns the manifest once every shard exists
    (from any worker), else None; an interrupted extraction resumes by shard.
    """
    n = len(dataset)
    num_shards = max(1, -(-n // shard_size))
    k = tokenizer.num_codes
    plan = {
        "tokenizer_id": tokenizer.tokenizer_id,
        "num_codes": k,
        "grid": list(tokenizer.grid),
        "code_dim": tokenizer.code_dim,
        "dataset": dataset_id,
        "count": n,
        "shard_size": shard_size,
        "num_shards": num_shards,
        "dtype": "uint16" if k <= 65536 else "uint32",
    }
    if identity is not None:
        plan["data_identity"] = identity
    os.makedirs(out_dir, exist_ok=True)
    plan_path = os.path.join(out_dir, "plan.json")
    old = _read_json(plan_path)
    if old is not None and old != plan:
        diff = {key: (old.get(key), plan[key]) for key in plan if old.get(key) != plan[key]}
        raise ShardError(
            f"{out_dir} holds an extraction with a different plan {diff}; use another output "
            "folder or delete this one"
        )
    if old is None:
        atomic_write_text(plan_path, json.dumps(plan, indent=2))
    mine = [s for s in range(num_shards) if s % world_size == rank]
    todo = [s for s in mine if not _shard_done(out_dir, s, min(shard_size, n - s * shard_size))]
    total = sum(min(shard_size, n - s * shard_size) for s in todo)
    if todo and batch_size == "auto":
        batch_size = auto_batch_size(tokenizer)
        if progress:
            print(f"extraction batch size {batch_size} (from free memory; --batch-size sets it)")
    state = {"batch": int(batch_size) if todo else 1}
    bar = progress_bar(
        total=total, desc=f"extract[{rank}/{world_size}]", unit="img", disable=not progress
    )
    for s in todo:
        start, stop = s * shard_size, min(n, (s + 1) * shard_size)
        idx_out = np.empty((stop - start, *tokenizer.grid), dtype=plan["dtype"])
        lbl_out = np.empty(stop - start, dtype=np.int32)
        b = start
        while b < stop:
            items = [dataset[i] for i in range(b, min(stop, b + state["batch"]))]
            images = torch.stack([im for im, _ in items])
            codes = _encode_fitting(tokenizer, images, state)
            idx_out[b - start : b - start + len(items)] = codes.numpy()
            lbl_out[b - start : b - start + len(items)] = [int(lbl) for _, lbl in items]
            bar.update(len(items))
            b += len(items)
        idx_p, lbl_p, meta_p = shard_paths(out_dir, s)
        _save_npy(idx_p, idx_out)
        _save_npy(lbl_p, lbl_out)
        meta = {
            "shard": s,
            "start": start,
            "count": stop - start,
            "sha256": _sha256(idx_out, lbl_out),
        }
        atomic_write_text(meta_p, json.dumps(meta))
    bar.close()
    return finalize(out_dir)


def finalize(out_dir: str) -> dict | None:
    """Write manifest.json when all shards are committed; return it (or None)."""
    plan = _read_json(os.path.join(out_dir, "plan.json"))
    if plan is None:
        raise ShardError(f"{out_dir} has no plan.json; it is not an extraction folder")
    metas = [_read_json(shard_paths(out_dir, s)[2]) for s in range(plan["num_shards"])]
    if any(m is None for m in metas):
        return None
    manifest = dict(plan)
    manifest["shards"] = [{"count": m["count"], "sha256": m["sha256"]} for m in metas]
    manifest["checksum"] = hashlib.sha256("".join(m["sha256"] for m in metas).encode()).hexdigest()
    path = os.path.join(out_dir, "manifest.json")
    if _read_json(path) != manifest:
        atomic_write_text(path, json.dumps(manifest, indent=2))
    return manifest


def verify_shard(
    idx: np.ndarray,
    lbl: np.ndarray,
    sha256: str,
    num_codes: int,
    num_classes: int | None,
    name: str,
    chunk: int = 1 << 16,
) -> None:
    """One pass over a shard: its checksum, every index in [0, num_codes) and every label in
    [0, num_classes). Raises ShardError naming ``name`` and the first bad row."""
    if _sha256(idx, lbl, chunk=chunk) != sha256:
        raise ShardError(
            f"{name} fails its sha256 check (the file changed after extraction); delete it and "
            "re-run `python experiments/extract_latents.py`"
        )
    for i in range(0, len(idx), chunk):
        part = idx[i : i + chunk]
        if part.size and int(part.max()) >= num_codes:
            row = i + int(np.argmax(part.reshape(len(part), -1).max(1) >= num_codes))
            raise ShardError(
                f"{name} row {row} holds code {int(idx[row].max())}, outside "
                f"[0, {num_codes}) of the tokenizer; re-extract it"
            )
    if num_classes is not None and len(lbl):
        bad = np.flatnonzero((lbl < 0) | (lbl >= num_classes))
        if len(bad):
            raise ShardError(
                f"{name} row {int(bad[0])} has label {int(lbl[bad[0]])}, outside "
                f"[0, {num_classes}) (data.num_classes); fix data.num_classes or "
                "re-extract"
            )


def _open_array(path: str, s: int, folder: str) -> np.ndarray:
    """Memory-map one array of shard ``s`` (never unpickles: object arrays are refused)."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ShardError(f"cannot read shard {s} of {folder} ({path}): {e}") from e


class IndexShards(torch.utils.data.Dataset):
    """Memory-mapped (indices long (H, W), label int) pairs from an extraction folder.

    ``verify`` (the trainer's default) checks every shard's sha256 and the ranges of its
    indices (< K) and labels (< ``num_classes``) when the folder is opened, so corruption
    fails at start-up naming the shard, not when a bad row happens to be drawn.
    """

    def __init__(
        self,
        folder: str,
        verify: bool = False,
        num_classes: int | None = None,
        progress: bool = False,
        identity: dict | None = None,
    ):
        self.folder = folder
        self.manifest = _read_json(os.path.join(folder, "manifest.json"))
        if self.manifest is None:
            raise ShardError(
                f"no manifest.json in {folder}: the extraction is missing or unfinished; run "
                "`python experiments/extract_latents.py` (it resumes where it stopped)"
            )
        if identity is not None and self.manifest.get("data_identity") != identity:
            from shared.data.identity import difference

            recorded = self.manifest.get("data_identity")
            why = (
                "it was extracted before data identities were recorded"
                if recorded is None
                else f"it holds latents of other data ({difference(recorded, identity)})"
            )
            raise ShardError(
                f"{folder} cannot serve this run: {why}. Point data.latents_dir at another "
                "folder (or leave it unset), or delete this one and extract again"
            )
        self.indices = []
        self.labels = []
        shards = self.manifest["shards"]
        for s, info in enumerate(
            progress_bar(
                shards, desc="verify shards", unit="shard", disable=not (verify and progress)
            )
        ):
            idx, lbl = (_open_array(p, s, folder) for p in shard_paths(folder, s)[:2])
            if len(idx) != info["count"] or len(lbl) != info["count"]:
                raise ShardError(
                    f"shard {s} of {folder} holds {len(idx)} rows, manifest says "
                    f"{info['count']}; re-run the extraction"
                )
            if verify:
                name = f"shard {shard_paths(folder, s)[0]}"
                verify_shard(
                    idx, lbl, info["sha256"], self.manifest["num_codes"], num_classes, name
                )
            self.indices.append(idx)
            self.labels.append(lbl)
        self.offsets = np.cumsum([0] + [len(a) for a in self.indices])
        self.grid = tuple(self.manifest["grid"])
        self.num_codes = self.manifest["num_codes"]

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int):
        s = int(np.searchsorted(self.offsets, i, side="right") - 1)
        j = i - self.offsets[s]
        return torch.from_numpy(self.indices[s][j].astype(np.int64)), int(self.labels[s][j])

    def gather(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch by global row numbers: indices (B, H, W) long, labels (B,) long."""
        rows = np.asarray(rows, dtype=np.int64)
        shard = np.searchsorted(self.offsets, rows, side="right") - 1
        idx = np.empty((len(rows), *self.grid), dtype=np.int64)
        lbl = np.empty(len(rows), dtype=np.int64)
        for s in np.unique(shard):
            sel = shard == s
            local = rows[sel] - self.offsets[s]
            idx[sel] = self.indices[s][local]
            lbl[sel] = self.labels[s][local]
        return torch.from_numpy(idx), torch.from_numpy(lbl)

    def load_all(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Everything in memory: indices (N, H, W) long, labels (N,) long."""
        idx = np.concatenate([np.asarray(a) for a in self.indices]).astype(np.int64)
        lbl = np.concatenate([np.asarray(a) for a in self.labels]).astype(np.int64)
        return torch.from_numpy(idx), torch.from_numpy(lbl)


class ShardSubset:
    """The first ``round(fraction · N)`` rows of a fixed permutation of ``shards`` (seeded by
    ``seed`` alone, so every run and objective given the same fraction trains on the same
    images): for repeated-data studies, a smaller training set seen more times at the same
    compute. Exposes what the training loop uses: ``len``, ``gather`` and ``manifest``."""

    def __init__(self, shards: IndexShards, fraction: float, seed: int = 0):
        if not 0 < fraction <= 1:
            raise ValueError(f"a data fraction must be in (0, 1], got {fraction}")
        self.shards = shards
        self.fraction = fraction
        n = max(1, round(fraction * len(shards)))
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EB5E7]))
        self.rows = np.sort(rng.permutation(len(shards))[:n])
        self.manifest = shards.manifest
        self.grid = shards.grid
        self.num_codes = shards.num_codes

    def __len__(self) -> int:
        return len(self.rows)

    def gather(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return self.shards.gather(self.rows[np.asarray(rows, dtype=np.int64)])
