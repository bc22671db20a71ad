"""What verifying index shards costs when a run opens them, at a chosen scale.

    python experiments/shard_verify_cost.py                       # ImageNet-256: 1.28M × 32×32
    python experiments/shard_verify_cost.py --rows 60000 --grid 8 # Fashion-MNIST: 60k × 8×8

Writes synthetic shards (random codes < K, labels < classes, 10k rows per shard: the
extractor's layout) into a temporary folder, then times ``IndexShards(verify=True)`` — one
pass that checks every shard's sha256 and the ranges of its codes and labels — against a
plain open without verification. The page cache is warm (the files were just written),
which is the usual case for a relaunch on the same node; a cold read adds disk time.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

from shared.io import atomic_write_text
from shared.latents import IndexShards, _save_npy, _sha256, finalize, shard_paths


def write_shards(folder, rows, grid, codes, classes, shard_size=10000, seed=0):
    rng = np.random.default_rng(seed)
    num_shards = -(-rows // shard_size)
    plan = {
        "tokenizer_id": "synthetic",
        "num_codes": codes,
        "grid": [grid, grid],
        "code_dim": 4,
        "dataset": "synthetic",
        "count": rows,
        "shard_size": shard_size,
        "num_shards": num_shards,
        "dtype": "uint16",
    }
    atomic_write_text(os.path.join(folder, "plan.json"), json.dumps(plan))
    for s in range(num_shards):
        n = min(shard_size, rows - s * shard_size)
        idx = rng.integers(0, codes, (n, grid, grid), dtype=np.uint16)
        lbl = rng.integers(0, classes, n, dtype=np.int32)
        idx_p, lbl_p, meta_p = shard_paths(folder, s)
        _save_npy(idx_p, idx)
        _save_npy(lbl_p, lbl)
        meta = {"shard": s, "start": s * shard_size, "count": n, "sha256": _sha256(idx, lbl)}
        atomic_write_text(meta_p, json.dumps(meta))
    return finalize(folder)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_281_167)
    ap.add_argument("--grid", type=int, default=32)
    ap.add_argument("--codes", type=int, default=16384)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where to write the shards (default: a temp dir)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        t0 = time.perf_counter()
        write_shards(folder, args.rows, args.grid, args.codes, args.classes)
        write_s = time.perf_counter() - t0
        plain, verified = [], []
        for _ in range(args.reps):  # interleaved, best of reps
            t0 = time.perf_counter()
            IndexShards(folder)
            plain.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            IndexShards(folder, verify=True, num_classes=args.classes)
            verified.append(time.perf_counter() - t0)
        size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
    out = {
        "rows": args.rows,
        "grid": args.grid,
        "bytes": size,
        "write_s": round(write_s, 2),
        "open_s": float(f"{min(plain):.4g}"),
        "verify_s": float(f"{min(verified):.4g}"),
        "verify_GB_per_s": round(size / min(verified) / 1e9, 3),
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
