"""ImageNet-style class-folder reader: ``root/<class>/<image>``, ADM centre crop.

Class indices follow the sorted folder names (so ImageNet's ``n01440764`` … order gives
the standard 0…999 labels). Nothing is skipped silently: an empty class folder, a file
that is not an image, or an image that cannot be decoded is an error naming its path.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".ppm", ".tif", ".tiff")


class ImageFolderError(ValueError):
    """The folder tree or one of its images is not usable."""


def adm_center_crop(image: Image.Image, size: int) -> np.ndarray:
    """ADM's centre crop (Dhariwal & Nichol 2021, guided-diffusion ``center_crop_arr``).

    Halve with a box filter while the short side is ≥ 2·size, resize bicubically so the
    short side equals ``size``, then take the central size×size square.
    """
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(s * scale) for s in image.size), resample=Image.BICUBIC)
    arr = np.asarray(image)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[top : top + size, left : left + size]


def scan_class_folders(root: str) -> tuple[list[str], list[tuple[str, int]]]:
    """Sorted class names and (path, class index) pairs; raises on anything odd."""
    if not os.path.isdir(root):
        raise ImageFolderError(
            f"image folder {root} does not exist; expected root/<class>/<image> "
            "(e.g. the ImageNet train folder); set data.root"
        )
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise ImageFolderError(f"image folder {root} holds no class sub-folders")
    samples, empty, foreign = [], [], []
    for idx, name in enumerate(classes):
        folder = os.path.join(root, name)
        files = sorted(
            e.name for e in os.scandir(folder) if e.is_file() and not e.name.startswith(".")
        )
        images = [f for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
        foreign += [os.path.join(folder, f) for f in files if f not in images]
        if not images:
            empty.append(folder)
        samples += [(os.path.join(folder, f), idx) for f in images]
    if empty:
        raise ImageFolderError(
            f"{len(empty)} class folder(s) hold no images: {', '.join(empty[:5])}"
            + (" …" if len(empty) > 5 else "")
        )
    if foreign:
        raise ImageFolderError(
            f"{len(foreign)} file(s) are not images ({'/'.join(IMAGE_EXTENSIONS)}): "
            f"{', '.join(foreign[:5])}" + (" …" if len(foreign) > 5 else "")
        )
    return classes, samples


class ImageFolder(Dataset):
    """``(image uint8 (3, size, size), label int)`` pairs from a class-folder tree."""

    def __init__(self, root: str, size: int = 256):
        self.root = root
        self.size = size
        self.classes, self.samples = scan_class_folders(root)
        self.num_classes = len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, path: str) -> torch.Tensor:
        try:
            with Image.open(path) as im:
                arr = adm_center_crop(im.convert("RGB"), self.size)
        except Exception as e:  # PIL raises many types for bad files
            raise ImageFolderError(f"cannot decode image {path}: {type(e).__name__}: {e}") from e
        return torch.from_numpy(np.array(arr)).permute(2, 0, 1)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        return self.load(path), label

    def verify(self) -> None:
        """Decode every image once; raise on the first bad one (by path)."""
        for path, _ in self.samples:
            self.load(path)
