"""Fashion-MNIST (Xiao et al. 2017) from the four IDX ``.gz`` files, as a torch Dataset.

The Debian package ``dataset-fashion-mnist`` installs them in
``/usr/share/datasets/fashion-mnist``; any folder holding the same four files works.
Images are uint8 (1, size, size): 28×28 is zero-padded to 32×32 by default (the
background is 0), or resized for other sizes.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .idx import IDXError, read_images, read_labels

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
COUNTS = {"train": 60000, "test": 10000}
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
NATIVE_SIZE = 28


def missing_data_message(root: str) -> str:
    return (
        f"Fashion-MNIST not found in {root}: expected the four IDX files "
        f"{', '.join(f for pair in FILES.values() for f in pair)}. Install them with "
        "`apt-get install -y dataset-fashion-mnist` (as root; they land in "
        f"{DEFAULT_ROOT}), or point data.root (env FASHION_MNIST_ROOT) at a folder holding them."
    )


def resolve_root(root: str | None) -> str:
    return root or os.environ.get("FASHION_MNIST_ROOT") or DEFAULT_ROOT


def resize_images(images: torch.Tensor, size: int, mode: str = "pad") -> torch.Tensor:
    """(N, h, w) uint8 → (N, 1, size, size) uint8, by centred zero-padding or bilinear resize."""
    n, h, w = images.shape
    if mode == "pad":
        if size < max(h, w) or (size - h) % 2 or (size - w) % 2:
            raise ValueError(
                f"cannot centre-pad {h}×{w} images to {size}×{size}: the size must be ≥ "
                f"{max(h, w)} and differ by an even number; use resize mode 'resize' instead"
            )
        ph, pw = (size - h) // 2, (size - w) // 2
        out = F.pad(images, (pw, pw, ph, ph))
    elif mode == "resize":
        x = images[:, None].float()
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
        out = x.round().clamp_(0, 255).to(torch.uint8)[:, 0]
    else:
        raise ValueError(f"unknown resize mode {mode!r}; expected 'pad' or 'resize'")
    return out[:, None].contiguous()


def load_fashion_mnist(
    root: str | None = None, split: str = "train", size: int = 32, resize: str = "pad"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return images uint8 (N, 1, size, size) and labels int64 (N,), validated."""
    if split not in FILES:
        raise ValueError(f"unknown Fashion-MNIST split {split!r}; expected 'train' or 'test'")
    root = resolve_root(root)
    img_name, lbl_name = FILES[split]
    img_path, lbl_path = os.path.join(root, img_name), os.path.join(root, lbl_name)
    if not (os.path.isfile(img_path) and os.path.isfile(lbl_path)):
        raise FileNotFoundError(missing_data_message(root))
    images = read_images(img_path)
    labels = read_labels(lbl_path, num_classes=len(CLASSES))
    if images.shape[1:] != (NATIVE_SIZE, NATIVE_SIZE):
        raise IDXError(
            f"{img_path} holds images of shape {images.shape[1:]}; Fashion-MNIST images are "
            f"{NATIVE_SIZE}×{NATIVE_SIZE}"
        )
    if len(images) != len(labels):
        raise IDXError(
            f"{img_path} holds {len(images)} images but {lbl_path} holds {len(labels)} labels"
        )
    imgs = resize_images(torch.from_numpy(np.array(images)), size, resize)
    return imgs, torch.from_numpy(labels)


class FashionMNIST(Dataset):
    """Fashion-MNIST as ``(image uint8 (1, size, size), label int)`` pairs, held in memory.

    ``strict_count`` checks the canonical 60,000/10,000 sizes; by default it is on for the
    Debian folder and off for a custom ``root`` (which may hold a subset).
    """

    num_classes = len(CLASSES)
    classes = CLASSES

    def __init__(
        self,
        root: str | None = None,
        split: str = "train",
        size: int = 32,
        resize: str = "pad",
        strict_count: bool | None = None,
    ):
        self.root = resolve_root(root)
        self.split = split
        self.size = size
        self.images, self.labels = load_fashion_mnist(self.root, split, size, resize)
        if strict_count is None:
            strict_count = os.path.abspath(self.root) == DEFAULT_ROOT
        if strict_count and len(self.images) != COUNTS[split]:
            raise IDXError(
                f"Fashion-MNIST {split} split in {self.root} has {len(self.images)} images; "
                f"expected {COUNTS[split]} (pass strict_count=False for a subset)"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])
