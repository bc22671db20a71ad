"""Check the default dataset end to end and write a labelled sample grid.

    python experiments/inspect_data.py [--root DIR] [--out outputs/data]

Until the training runner exists this is what ``make demo`` runs: it validates both
Fashion-MNIST splits (IDX headers, counts, labels), prints class counts and pixel
statistics, and saves one row of 10 images per class.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from shared.data import FashionMNIST
from shared.images import save_grid
from shared.io import atomic_write_text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--root", default=None, help="folder with the four IDX .gz files")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--out", default="outputs/data")
    args = ap.parse_args()

    t0 = time.time()
    summary = {}
    for split in ("train", "test"):
        ds = FashionMNIST(args.root, split, size=args.size)
        counts = torch.bincount(ds.labels, minlength=ds.num_classes).tolist()
        px = ds.images.float()
        summary[split] = {
            "n": len(ds),
            "shape": list(ds.images.shape[1:]),
            "class_counts": counts,
            "pixel_mean": round(px.mean().item(), 3),
            "pixel_std": round(px.std().item(), 3),
        }
        print(f"{split:5s}: {len(ds)} images {tuple(ds.images.shape[1:])}, per class {counts}")
    # one row per class: the first 10 test images of each label
    rows = [ds.images[ds.labels == k][:10] for k in range(ds.num_classes)]
    grid_path = os.path.join(args.out, "fashion_mnist_test_grid.png")
    save_grid(torch.cat(rows), grid_path, nrow=10)
    atomic_write_text(os.path.join(args.out, "summary.json"), json.dumps(summary, indent=2))
    print(f"wrote {grid_path} and summary.json in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
