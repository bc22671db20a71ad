"""Synthetic data in the real layouts: Fashion-MNIST IDX files and an ImageNet-style class
folder tree."""

import os

import numpy as np
from PIL import Image

from shared.data import write_idx
from shared.data.fashion_mnist import FILES


def make_fmnist(root, n_train=12, n_test=5, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        imgs = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        lbls = rng.integers(0, 10, size=(n,), dtype=np.uint8)
        write_idx(os.path.join(root, FILES[split][0]), imgs)
        write_idx(os.path.join(root, FILES[split][1]), lbls)
        arrays[split] = (imgs, lbls)
    return arrays


def make_tree(root, sizes=((300, 200), (64, 90))):
    rng = np.random.default_rng(0)
    for cls in ("zebra", "ant", "moth"):  # sorted order: ant, moth, zebra
        os.makedirs(root / cls)
        for i, (w, h) in enumerate(sizes):
            arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / cls / f"img{i}.png")
