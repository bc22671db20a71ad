"""Encode a dataset once into index shards (resumable, atomic, shardable across workers).

    python experiments/extract_latents.py                # Fashion-MNIST train+test
    python experiments/extract_latents.py --dataset imagefolder --data-root /data/imagenet/train \\
        --tokenizer sd-vq-f8 --tokenizer-path vq-f8/model.ckpt --image-size 256

On SLURM, an array job splits the shards (``sbatch --array=0-15 ...``): each task takes
shards s with s % SLURM_ARRAY_TASK_COUNT == task id; under torchrun, RANK/WORLD_SIZE do the
same. Re-running after an interruption keeps finished shards and redoes the rest; the last
worker to finish writes manifest.json.
"""

from __future__ import annotations

import argparse
import os

import torch

from shared.data import FashionMNIST, ImageFolder
from shared.latents import extract
from shared.paths import cache_root
from shared.tokenizers import load_tokenizer


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


def default_out(tokenizer_id: str, dataset_id: str) -> str:
    safe = lambda s: s.replace("/", "_").replace(":", "-")  # noqa: E731
    return str(cache_root() / "latents" / safe(tokenizer_id) / safe(dataset_id))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tokenizer", default="fashion-vq",
                    choices=["fashion-vq", "sd-vq-f8", "llamagen-vq-ds8"])  # fmt: skip
    ap.add_argument("--tokenizer-path", default=None)
    ap.add_argument("--dataset", default="fashion", choices=["fashion", "imagefolder"])
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--splits", default="train,test", help="fashion only")
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--out", default=None, help="parent folder (default: under the cache)")
    ap.add_argument("--shard-size", type=int, default=10000)
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--rank", type=int, default=0)
    ap.add_argument("--world-size", type=int, default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    rank, world = worker_position(args)
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = f"cuda:{local}" if args.device == "cuda" else args.device
    tok = load_tokenizer(args.tokenizer, args.tokenizer_path, args.image_size).to(device)
    if args.dataset == "fashion":
        jobs = [(FashionMNIST(args.data_root, s, size=tok.image_size), f"fashion-mnist-{s}")
                for s in args.splits.split(",")]  # fmt: skip
    else:
        if not args.data_root:
            ap.error("--dataset imagefolder needs --data-root")
        ds = ImageFolder(args.data_root, size=tok.image_size)
        jobs = [(ds, f"imagefolder-{os.path.basename(os.path.normpath(args.data_root))}")]
    for ds, ds_id in jobs:
        out = os.path.join(args.out, ds_id) if args.out else default_out(tok.tokenizer_id, ds_id)
        print(f"[{rank}/{world}] {ds_id}: {len(ds)} images → {out}")
        manifest = extract(ds, tok, out, ds_id, args.shard_size, args.batch_size, rank, world)
        if manifest:
            print(f"  complete: {manifest['count']} items, checksum {manifest['checksum'][:16]}")
        else:
            print("  this worker's shards are done; other workers' shards are still missing")


if __name__ == "__main__":
    main()
