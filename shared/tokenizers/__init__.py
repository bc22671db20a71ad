"""Tokenizers: one interface (``Tokenizer``), three backends, all on one ``VQModel``
(diffusers' layout, ``vqmodel.py``)."""

from .base import Tokenizer, to_float, to_uint8
from .fashion import FashionVQ, FashionVQConfig, shipped_fashion_tokenizer, train_fashion_vq
from .pretrained import SDVQF8, LlamaGenVQ

BACKENDS = {"fashion-vq": FashionVQ, "sd-vq-f8": SDVQF8, "llamagen-vq-ds8": LlamaGenVQ}


def load_tokenizer(backend: str, path: str | None = None, image_size: int | None = None):
    """Load a tokenizer by backend name; without a path the Fashion one is the shipped one."""
    if backend == "fashion-vq":
        from ..artifacts import shipped_tokenizer_name

        name = shipped_tokenizer_name(path)  # unset or shipped:<name>
        return shipped_fashion_tokenizer(name) if name else FashionVQ.load(path)
    if backend not in BACKENDS:
        raise ValueError(f"unknown tokenizer backend {backend!r}; choose one of {list(BACKENDS)}")
    return BACKENDS[backend].load(path, image_size or 256)


__all__ = [
    "Tokenizer",
    "to_float",
    "to_uint8",
    "FashionVQ",
    "FashionVQConfig",
    "shipped_fashion_tokenizer",
    "train_fashion_vq",
    "SDVQF8",
    "LlamaGenVQ",
    "BACKENDS",
    "load_tokenizer",
]
