"""What a dataset *is*, so that caches derived from it are keyed by content.

A name (``imagefolder-<basename>``) would let two folders called ``train`` share one cache,
and latents extracted at 128 px be reused by a 256 px run. So a dataset's identity is what
decides its pixels:

- Fashion-MNIST: the split, the sha256 of its two IDX files, the image size and the resize.
- A class-folder tree: its resolved path, the class count, the image count, a digest of the
  listing (every image's relative path, byte size and mtime, in label order) and the image
  size. A copied or touched folder is another dataset: re-extract (conservative on purpose).

:func:`dataset_id` names the shard folder by the identity's digest, so different data never
shares a folder; the identity itself goes into the extraction's plan and manifest, and
``IndexShards(identity=…)`` refuses a folder whose identity differs, naming the difference.
"""

from __future__ import annotations

import hashlib
import os

from shared.io import file_sha256
from shared.paths import config_hash

from .fashion_mnist import FILES, resolve_root
from .image_folder import scan_class_folders


def fashion_identity(root: str | None, split: str, size: int, resize: str = "pad") -> dict:
    root = resolve_root(root)
    files = "".join(file_sha256(os.path.join(root, f)) for f in FILES[split])
    return {
        "kind": "fashion-mnist",
        "split": split,
        "image_size": int(size),
        "resize": resize,
        "files_sha256": hashlib.sha256(files.encode()).hexdigest(),
    }


def folder_identity(root: str, size: int) -> dict:
    """The identity of ``root/<class>/<image>`` (one stat per image; raises
    ``ImageFolderError`` on a tree the reader would refuse)."""
    classes, samples = scan_class_folders(root)
    h = hashlib.sha256()
    for path, label in samples:
        st, rel = os.stat(path), os.path.relpath(path, root)
        h.update(f"{rel}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return {
        "kind": "imagefolder",
        "root": os.path.realpath(root),
        "classes": len(classes),
        "count": len(samples),
        "listing_sha256": h.hexdigest(),
        "image_size": int(size),
    }


def dataset_id(prefix: str, identity: dict) -> str:
    """The shard folder's name: a readable prefix, the image size and the identity's digest."""
    return f"{prefix}-{identity['image_size']}px-{config_hash(identity, 12)}"


def difference(recorded: dict | None, now: dict) -> str:
    """``key: recorded → now`` for every key that differs (for error messages)."""
    recorded = recorded or {}
    keys = [k for k in sorted(set(recorded) | set(now)) if recorded.get(k) != now.get(k)]
    return "; ".join(f"{k}: {recorded.get(k)!r} → {now.get(k)!r}" for k in keys)
