"""A toy ImageNet for trying the walkthrough of docs/imagenet.md on a CPU.

    python tests/helpers/toy_imagenet.py OUT [--classes 3] [--per-class 8]

Writes ``OUT/train/<wnid>/*.JPEG`` (mixed modes and sizes, as ImageNet's are: RGB, greyscale,
CMYK, RGBA, a PNG named .JPEG, 100×80 and 1024×200) and ``OUT/vq-f8/model.ckpt``: an SD
vq-f8 checkpoint in the real taming/ldm layout (4 levels, f=8, K=16384, d=4) at a small width
and random weights, so every loading path is the real one and only the numbers are noise."""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
from PIL import Image
from taming_reference import RefVQ

MODES = ["RGB", "L", "CMYK", "RGBA", "PNG", "RGB", "L", "RGB"]
SIZES = [(300, 260), (100, 80), (1024, 200), (256, 256)]


def write_images(root: str, classes: int, per_class: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = os.path.join(root, f"n{c:08d}")
        os.makedirs(folder, exist_ok=True)
        for i in range(per_class):
            w, h = SIZES[i % len(SIZES)]
            rgb = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            mode = MODES[i % len(MODES)]
            path = os.path.join(folder, f"n{c:08d}_{i}.JPEG")
            if mode == "PNG":
                rgb.save(path, format="PNG")
            else:
                rgb.convert(mode).save(path, format="PNG" if mode == "RGBA" else "JPEG")


def write_sd_vq_f8(path: str, seed: int = 0) -> None:
    torch.manual_seed(seed)
    ref = RefVQ("ldm", ch=32, ch_mult=(1, 1, 2, 2), n_res=1, z_ch=4, embed_dim=4, n_embed=16384)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({"state_dict": ref.state_dict(), "global_step": 0}, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out")
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--per-class", type=int, default=8)
    args = ap.parse_args()
    write_images(os.path.join(args.out, "train"), args.classes, args.per_class)
    write_sd_vq_f8(os.path.join(args.out, "vq-f8", "model.ckpt"))
    print(
        f"{args.out}/train: {args.classes} classes × {args.per_class} images; "
        f"{args.out}/vq-f8/model.ckpt (random weights, real layout)"
    )


if __name__ == "__main__":
    main()
