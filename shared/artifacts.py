"""The project's fixed artifacts: the Fashion-MNIST tokenizer and the ``fd_fashion`` network.

Both are trained once by the project's own seeded scripts and shipped in the repository
(``shared/artifacts/<name>/``), with every file's sha256 and the numbers they reproduce in
``shared/artifacts/manifest.json``. Runs load them from there after checking the checksums
and never retrain them, so every machine measures ``fd_fashion`` with the same network on
the same index set (training them again on another CPU gives different weights: CPU
training is not bit-reproducible across machines).

    python experiments/build_artifacts.py             # rebuild both into the cache, compare
    python experiments/build_artifacts.py --install   # maintainers: replace the shipped ones

A run that uses a rebuilt tokenizer or network says so loudly: its numbers are not
comparable with those of the shipped artifacts.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

ARTIFACTS_DIR = Path(__file__).resolve().parent / "artifacts"
MANIFEST = ARTIFACTS_DIR / "manifest.json"
TOKENIZER = "fashion-vq"
METRIC_NET = "fashion-cnn"
# the shipped Fashion tokenizers: the default (K = 256) and the codebook-size axis (K = 4096,
# the same grid and code dimension); a run picks one with tokenizer.path=shipped:<name>
TOKENIZERS = ("fashion-vq", "fashion-vq-k4096")
SHIPPED = "shipped:"


def shipped_tokenizer_name(path: str | None) -> str | None:
    """The shipped tokenizer a ``tokenizer.path`` names (unset: the default), or None for a
    folder of the user's."""
    if not path:
        return TOKENIZER
    if str(path).startswith(SHIPPED):
        name = str(path)[len(SHIPPED) :]
        if name not in TOKENIZERS:
            raise ArtifactError(
                f"tokenizer.path={path}: no shipped tokenizer {name!r}; the shipped ones are "
                + ", ".join(SHIPPED + t for t in TOKENIZERS)
            )
        return name
    return None


class ArtifactError(RuntimeError):
    pass


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def weight_files(folder: str | os.PathLike) -> dict[str, str]:
    """{relative path: sha256} of the weight and config files under ``folder``."""
    folder = Path(folder)
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix in (".safetensors", ".json") and not p.name.startswith("."):
            out[p.relative_to(folder).as_posix()] = sha256_file(p)
    return out


def folder_digest(folder: str | os.PathLike) -> str:
    """One identity for a folder's weights and configs: sha256 over the sorted
    (path, sha256) pairs of :func:`weight_files`."""
    return hashlib.sha256(json.dumps(sorted(weight_files(folder).items())).encode()).hexdigest()


def state_digest(module) -> str:
    """Identity of a network's weights: sha256 over its state dict (names, dtypes, shapes,
    bytes), independent of how the file that held them was serialised."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def manifest() -> dict:
    try:
        with open(MANIFEST) as f:
            return json.load(f)
    except FileNotFoundError:
        raise ArtifactError(
            f"{MANIFEST} is missing: this checkout is incomplete; restore it "
            "with `git checkout -- shared/artifacts`"
        ) from None


def shipped(name: str) -> str:
    """The folder of shipped artifact ``name`` after checking every file's sha256."""
    entry = manifest().get(name)
    if entry is None:
        raise ArtifactError(f"{MANIFEST} lists no artifact {name!r}")
    folder = ARTIFACTS_DIR / name
    for rel, expected in entry["files"].items():
        path = folder / rel
        if not path.is_file():
            raise ArtifactError(
                f"shipped artifact file {path} is missing; restore it with "
                "`git checkout -- shared/artifacts`"
            )
        try:
            actual = sha256_file(path)
        except OSError as e:
            raise ArtifactError(
                f"shipped artifact file {path} cannot be read ({e.strerror or e}); restore it "
                "with `git checkout -- shared/artifacts` (or clone the repository again)"
            ) from None
        if actual != expected:
            raise ArtifactError(
                f"shipped artifact file {path} fails its sha256 check against {MANIFEST.name} "
                f"(expected {expected[:12]}…, found {actual[:12]}…); restore it with `git "
                "checkout -- shared/artifacts` (or `git lfs pull` if your clone stores it as a "
                "pointer)"
            )
    return str(folder)


def shipped_digest(name: str) -> str:
    return manifest()[name]["digest"]


def recorded(name: str) -> dict:
    """The numbers the shipped artifact reproduces (see tests/shared/test_artifacts.py)."""
    return manifest()[name]["recorded"]


def not_comparable_warning(what: str, found: str, name: str | tuple) -> str | None:
    """A loud line when ``found`` (a digest) is not the shipped artifact ``name`` (or one of
    the names given); else None."""
    names = (name,) if isinstance(name, str) else tuple(name)
    digests = [manifest()[n]["digest"] for n in names if n in manifest()]
    if found in digests:
        return None
    expected = shipped_digest(names[0])
    return (
        f"WARNING: the {what} of this run ({found[:12]}) is not the shipped one "
        f"({expected[:12]}); its fd_fashion numbers are NOT comparable with numbers "
        "measured with the shipped artifacts (docs/trust.md: comparable numbers)"
    )
