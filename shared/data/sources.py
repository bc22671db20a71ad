"""Where a run's training images come from, and where their index shards live: one convention
for ``experiments/extract_latents.py`` and the runner (``data.latents_dir``), so that both
find the same shards.

Every extraction has its own folder ``<root>/<tokenizer id>/<dataset id>`` under a root
(default: the cache's ``latents/``), and the dataset id carries a digest of the data's
identity (``shared/data/identity.py``: its files or listing, and the image size).
"""

from __future__ import annotations

import os

from shared.paths import cache_root

from .fashion_mnist import FashionMNIST
from .image_folder import ImageFolder


def shard_folder(latents_dir: str | None, tokenizer_id: str, dataset_id: str) -> str:
    """The shard folder of (tokenizer, dataset) under the root ``latents_dir`` (None: the
    cache's ``latents/``): ``<root>/<tokenizer id>/<dataset id>``. A ``latents_dir`` that is
    itself an extraction (it holds plan.json) is taken as it is; its identity is still
    checked by the reader."""
    if latents_dir and os.path.isfile(os.path.join(latents_dir, "plan.json")):
        return latents_dir
    safe = lambda s: s.replace("/", "_").replace(":", "-")  # noqa: E731
    root = latents_dir or str(cache_root() / "latents")
    return os.path.join(root, safe(tokenizer_id), safe(dataset_id))


def open_dataset(dataset: str, root: str | None, split: str, size: int):
    """The Fashion-MNIST split or the class-folder tree itself, at ``size`` px."""
    if dataset == "fashion":
        return FashionMNIST(root, split, size=size)
    return ImageFolder(root, size=size)


def data_source(dataset: str, root: str | None, split: str, size: int):
    """(dataset id, identity, maker of the dataset) of a Fashion-MNIST split or a class-folder
    tree at ``size`` px. The identity is computed here (a hash of the Fashion files, or one
    stat per image of the folder); the dataset itself is built only when ``maker()`` is called."""
    from shared.data.identity import dataset_id, fashion_identity, folder_identity

    make = lambda: open_dataset(dataset, root, split, size)  # noqa: E731
    if dataset == "fashion":
        identity = fashion_identity(root, split, size)
        return dataset_id(f"fashion-mnist-{split}", identity), identity, make
    identity = folder_identity(root, size)
    prefix = f"imagefolder-{os.path.basename(os.path.normpath(root))}"
    return dataset_id(prefix, identity), identity, make
