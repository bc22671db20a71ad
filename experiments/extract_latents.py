"""Encode a dataset once into index shards (resumable, atomic, shardable across workers).

    python experiments/extract_latents.py                # Fashion-MNIST train+test
    python experiments/extract_latents.py --dataset imagefolder --data-root /data/imagenet/train \\
        --tokenizer sd-vq-f8 --tokenizer-path vq-f8/model.ckpt --image-size 256

Where the shards go is one convention, shared with the runs' ``data.latents_dir``: a root
folder (default: the cache's ``latents/``) under which every extraction has its own folder,
``<tokenizer id>/<dataset id>``, and the dataset id carries a digest of the data's identity
(``shared/data/identity.py``: its files or listing, and the image size). So
``extract_latents.py --out /scratch/lat`` and a run with ``data.latents_dir=/scratch/lat`` find
the same shards, and two folders both called ``train`` never share one.

On SLURM, an array job splits the shards (``sbatch --array=0-15 ...``): each task takes
shards s with s % SLURM_ARRAY_TASK_COUNT == task id; under torchrun, RANK/WORLD_SIZE do the
same. Re-running after an interruption keeps finished shards and redoes the rest; the last
worker to finish writes manifest.json.
"""

from __future__ import annotations

import argparse
import os

import torch

from shared.choices import DATASETS, TOKENIZER_BACKENDS
from shared.data.sources import data_source, open_dataset, shard_folder
from shared.latents import extract
from shared.tokenizers import load_tokenizer

__all__ = ["data_source", "open_dataset", "shard_folder", "worker_position"]


def worker_position(args) -> tuple[int, int]:
    if args.world_size is not None:
        return args.rank, args.world_size
    env = os.environ
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        first = int(env.get("SLURM_ARRAY_TASK_MIN", 0))
        return int(env["SLURM_ARRAY_TASK_ID"]) - first, int(env["SLURM_ARRAY_TASK_COUNT"])
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"])
    return 0, 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tokenizer", default="fashion-vq", choices=TOKENIZER_BACKENDS)
    ap.add_argument("--tokenizer-path", default=None)
    ap.add_argument("--dataset", default="fashion", choices=DATASETS)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--splits", default="train,test", help="fashion only")
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument(
        "--out",
        default=None,
        help="root folder, as data.latents_dir (default: the cache's latents/)",
    )
    ap.add_argument("--shard-size", type=int, default=10000)
    ap.add_argument(
        "--batch-size",
        type=lambda v: v if v == "auto" else int(v),
        default="auto",
        help="images per encoder call; auto: the largest that fits in half the "
        "free memory, at most 500",
    )
    ap.add_argument("--rank", type=int, default=0)
    ap.add_argument("--world-size", type=int, default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    rank, world = worker_position(args)
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = f"cuda:{local}" if args.device == "cuda" else args.device
    tok = load_tokenizer(args.tokenizer, args.tokenizer_path, args.image_size).to(device)
    if args.dataset == "imagefolder" and not args.data_root:
        ap.error("--dataset imagefolder needs --data-root")
    splits = args.splits.split(",") if args.dataset == "fashion" else ["train"]
    for split in splits:
        ds_id, identity, make = data_source(args.dataset, args.data_root, split, tok.image_size)
        ds = make()
        out = shard_folder(args.out, tok.tokenizer_id, ds_id)
        print(f"[{rank}/{world}] {ds_id}: {len(ds)} images → {out}")
        manifest = extract(
            ds, tok, out, ds_id, args.shard_size, args.batch_size, rank, world, identity=identity
        )
        if manifest:
            print(f"  complete: {manifest['count']} items, checksum {manifest['checksum'][:16]}")
        else:
            print("  this worker's shards are done; other workers' shards are still missing")


if __name__ == "__main__":
    main()
