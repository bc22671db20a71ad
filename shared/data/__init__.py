"""Data layer: Fashion-MNIST IDX reader, class-folder reader, resumable sampler."""

from .fashion_mnist import FashionMNIST, load_fashion_mnist
from .idx import IDXError, read_idx, read_images, read_labels, write_idx
from .image_folder import ImageFolder, ImageFolderError, adm_center_crop
from .sampler import InfiniteSampler, epoch_permutation

__all__ = [
    "FashionMNIST",
    "load_fashion_mnist",
    "IDXError",
    "read_idx",
    "read_images",
    "read_labels",
    "write_idx",
    "ImageFolder",
    "ImageFolderError",
    "adm_center_crop",
    "InfiniteSampler",
    "epoch_permutation",
]
