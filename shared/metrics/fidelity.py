"""Sample-quality metrics on cached reference features, with torch-fidelity's arithmetic.

One entry point::

    ref = reference_features("fashion", split="train", n=1000)        # cached, validated
    metrics = compute_metrics(generated_uint8, ref)                   # dict

Features come from the in-domain ``fashion-cnn`` (``FashionFeatures``) or torch-fidelity's
``inception-v3-compat`` with the offline weights (torch-fidelity is imported only then), and
every number from ``stats.py``: torch-fidelity 0.4.0's metric functions (FID/FD, KID,
precision/recall, IS) operation for operation, equal to them to the last bit (tested). Keys say
which network measured them: ``fid_inception``, ``kid_inception`` … vs ``fd_fashion``,
``kid_fashion`` …; a Fréchet distance in the classifier's space is never called FID.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable

import numpy as np
import torch

from ..artifacts import state_digest
from ..io import atomic_torch_save
from ..paths import cache_root, config_hash
from ..progress import progress_bar
from ..safe_load import FileLoadError, load_torch_file
from . import stats
from .fashion_cnn import FashionFeatures
from .inception import inception_weights_path

KINDS = ("fashion", "inception")
FD_KEY = {"fashion": "fd_fashion", "inception": "fid_inception"}


def build_extractor(kind: str, device="cpu", inception_weights: str = "auto", net=None):
    """A feature extractor: ``FashionFeatures``, or torch-fidelity's Inception. ``net``
    overrides the fashion classifier (tests)."""
    cuda = torch.device(device).type == "cuda"
    if kind == "fashion":
        return FashionFeatures(net).to("cuda" if cuda else "cpu")
    if kind == "inception":
        from torch_fidelity.utils import create_feature_extractor

        if inception_weights == "download":  # torch-fidelity's own download (needs internet)
            path = None
        elif inception_weights == "auto":
            path = inception_weights_path()
        else:
            path = inception_weights
            if not os.path.isfile(path):
                raise FileNotFoundError(f"Inception weights {path} do not exist")
        feats = ["2048"] if path else ["2048", "logits_unbiased"]
        fe = create_feature_extractor(
            "inception-v3-compat",
            feats,
            cuda=False,
            verbose=False,
            feature_extractor_weights_path=path,
        )
        fe.has_logits = path is None  # the offline weights carry no classifier head
    else:
        raise ValueError(f"unknown feature extractor {kind!r}; choose one of {KINDS}")
    fe.kind = kind
    # the identity of the network that measures: results are comparable only under the same one
    fe.sha256 = state_digest(fe)
    return fe.to("cuda" if cuda else "cpu")


@torch.no_grad()
def extract_features(
    extractor, images: torch.Tensor | Iterable[torch.Tensor], batch_size=250, progress: bool = False
) -> dict[str, torch.Tensor]:
    """uint8 images (N,C,H,W), or an iterable of such batches → {'feat': (N, D), ['logits']}."""
    batches = (
        (images[i : i + batch_size] for i in range(0, len(images), batch_size))
        if torch.is_tensor(images)
        else images
    )
    device = next(extractor.parameters()).device
    out: dict[str, list] = {}
    total = len(images) if torch.is_tensor(images) else None
    for batch in progress_bar(
        batches,
        total=None if total is None else -(-total // batch_size),
        desc=f"features[{extractor.kind}]",
        disable=not progress,
    ):
        if batch.dtype != torch.uint8:
            raise TypeError(f"metrics take uint8 images, got {batch.dtype}")
        if extractor.kind == "inception" and batch.shape[1] == 1:
            batch = batch.expand(-1, 3, -1, -1)  # greyscale → RGB by replication
        if isinstance(extractor, FashionFeatures):
            feats = extractor(batch.to(device))
        else:  # torch-fidelity's: a tuple in the order of the requested features
            feats = extractor.convert_features_tuple_to_dict(extractor(batch.to(device)))
        for name, value in feats.items():
            key = "feat" if name in ("feat", "2048") else "logits"
            out.setdefault(key, []).append(value.double().cpu())
    return {k: torch.cat(v) for k, v in out.items()}


def _digest(features: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(features):
        h.update(k.encode())
        h.update(features[k].contiguous().numpy().tobytes())
    return h.hexdigest()


def image_source(dataset: str, split: str, size: int, data_root: str | None = None):
    """(number of images, index → uint8 image) of a reference dataset split."""
    if dataset == "fashion-mnist":
        from ..data import load_fashion_mnist

        images, _ = load_fashion_mnist(data_root, split, size)
        return len(images), images.__getitem__
    from ..data import ImageFolder  # an ImageNet-style folder, read lazily

    folder = ImageFolder(dataset.split(":", 1)[1], size)
    return len(folder), lambda i: folder[i][0]


def reference_order(total: int, seed: int) -> torch.Tensor:
    """The seeded order reference sets are drawn from: the first n are the reference set of
    size n; the ones after it are held out from it (``held_out_images``)."""
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))


def held_out_images(
    dataset: str,
    split: str,
    size: int,
    n_ref: int,
    n: int,
    seed: int = 0,
    data_root: str | None = None,
) -> torch.Tensor | None:
    """n real images disjoint from the reference set of size n_ref (same seed), or None when
    the split is too small: the real-vs-real and tokenizer-ceiling baselines use them."""
    total, get = image_source(dataset, split, size, data_root)
    if n_ref + n > total:
        return None
    pick = reference_order(total, seed)[n_ref : n_ref + n].sort().values
    return torch.stack([get(int(i)) for i in pick])


def reference_features(
    kind: str = "fashion",
    dataset: str = "fashion-mnist",
    split="train",
    size: int = 32,
    n: int | None = 1000,
    seed: int = 0,
    data_root: str | None = None,
    device="cpu",
    extractor=None,
    progress: bool = True,
) -> dict:
    """Features of a real reference set, computed once and cached per (dataset, split, size,
    extractor network, n, seed); a stale or corrupt cache file is rebuilt. Also returns the
    sha256 of the reference images themselves (``images_sha256``)."""
    if dataset != "fashion-mnist" and not dataset.startswith("imagefolder:"):
        raise ValueError(f"reference set {dataset!r}: use 'fashion-mnist' or 'imagefolder:<root>'")
    extractor = extractor or build_extractor(kind, device)
    if dataset == "fashion-mnist":  # the folder is part of the identity of the reference set
        from ..data.fashion_mnist import resolve_root

        dataset_id = f"fashion-mnist:{os.path.abspath(resolve_root(data_root))}"
    else:
        dataset_id = f"imagefolder:{os.path.abspath(dataset.split(':', 1)[1])}"
    key = {
        "dataset": dataset_id,
        "split": split,
        "size": size,
        "extractor": kind,
        "n": n,
        "seed": seed,
        "net": extractor.sha256,
    }
    path = cache_root() / "metrics" / "refs" / f"{kind}-{split}-{size}-n{n}-{config_hash(key)}.pt"
    if path.is_file():
        try:
            blob = load_torch_file(path, "reference statistics")
            feats = blob["features"]
            ok = (
                blob["key"] == key
                and _digest(feats) == blob["sha256"]
                and "images_sha256" in blob
                and (n is None or all(len(v) == n for v in feats.values()))
            )
            why = "stale (another key or checksum)"
            if ok and not all_finite(feats):  # its digest was taken of the nan
                ok, why = False, "non-finite features"
        except (FileLoadError, KeyError, TypeError) as e:  # unreadable, truncated or unsafe
            ok, why = False, str(e)
        if ok:
            return {
                "key": key,
                "features": feats,
                "images_sha256": blob["images_sha256"],
                "stats": reference_statistics(feats),
            }
        print(f"reference statistics {path} are stale or corrupt; rebuilding them ({why})")
    total, get = image_source(dataset, split, size, data_root)
    pick = torch.arange(total)
    if n is not None:
        if n > total:
            raise ValueError(f"asked for n={n} reference images but {dataset} has {total}")
        pick = reference_order(total, seed)[:n].sort().values
    images_sha = hashlib.sha256()  # the identity of the reference images themselves

    def batches():
        for j in range(0, len(pick), 250):
            batch = torch.stack([get(int(i)) for i in pick[j : j + 250]])
            images_sha.update(batch.numpy().tobytes())
            yield batch

    feats = extract_features(extractor, batches(), progress=progress)
    blob = {
        "key": key,
        "features": feats,
        "sha256": _digest(feats),
        "images_sha256": images_sha.hexdigest(),
    }
    atomic_torch_save(blob, path)
    return {
        "key": key,
        "features": feats,
        "images_sha256": blob["images_sha256"],
        "stats": reference_statistics(feats, progress),
    }


PRC_K = 3  # precision/recall's k nearest neighbours (torch-fidelity's default)


def kid_size(n_gen: int, n_ref: int, asked: int | None = None) -> int:
    """KID's subset size: the one asked for, else torch-fidelity's 1000 capped by both sets."""
    return asked or min(n_gen, n_ref, 1000)


def all_finite(values: dict) -> bool:
    """Every tensor or array among ``values`` finite (None: nothing to check). A cached
    statistic that is not, made by a bug or a damaged write, would make every metric nan."""
    for v in values.values():
        if v is not None and not bool(np.isfinite(np.asarray(v)).all()):
            return False
    return True


def reference_statistics(ref: dict, progress: bool = False) -> dict:
    """What every evaluation needs of a reference set's features and nothing else does: FD's
    {mu, sigma} and the manifold radii of precision (k = PRC_K). Computed once per feature set
    and cached, keyed by the features' sha256 (so by the images and the network that made
    them), as EDM2 caches its reference statistics; a stale or corrupt file is rebuilt."""
    digest = _digest({"feat": ref["feat"]})
    path = cache_root() / "metrics" / "ref_stats" / f"{digest[:32]}-k{PRC_K}.pt"
    if path.is_file():
        why = "stale (another digest or k)"
        try:
            blob = load_torch_file(path, "reference statistics")
            if not all_finite({k: blob[k] for k in ("mu", "sigma", "radii")}):
                why = "non-finite statistics"
            elif blob["features_sha256"] == digest and blob["k"] == PRC_K:
                return {
                    "mu": blob["mu"].numpy(),
                    "sigma": blob["sigma"].numpy(),
                    "radii": blob["radii"],
                }
        except (FileLoadError, KeyError, TypeError, AttributeError) as e:
            why = str(e)
        print(f"reference statistics {path} are stale or corrupt; rebuilding them ({why})")
    r = ref["feat"].double()
    fd = stats.fd_statistics(r)
    if progress:
        print(f"reference statistics: FD moments and precision radii of {len(r)} features")
    radii = stats.manifold_radii(r, PRC_K, 10000) if len(r) > PRC_K else None
    blob = {
        "features_sha256": digest,
        "k": PRC_K,
        "mu": torch.from_numpy(fd["mu"]),
        "sigma": torch.from_numpy(fd["sigma"]),
        "radii": radii,
    }
    atomic_torch_save(blob, path)
    return {"mu": fd["mu"], "sigma": fd["sigma"], "radii": radii}


def metrics_from_features(
    gen: dict,
    ref: dict,
    kind: str,
    which=("fd", "kid", "prc", "is"),
    kid_subset_size=None,
    seed=2020,
    ref_stats: dict | None = None,
) -> dict:
    """The metrics of precomputed features (``stats.py``: torch-fidelity's arithmetic, with
    its defaults: KID 100 subsets, precision/recall k = 3, IS 10 splits). ``ref_stats``: the
    reference's :func:`reference_statistics` (the same numbers, without recomputing them)."""
    out = {}
    g, r = gen["feat"].double(), ref["feat"].double()  # float64: KID sums tiny kernel gaps
    if "fd" in which:
        ref_fd = ref_stats if ref_stats is not None else stats.fd_statistics(r)
        out[FD_KEY[kind]] = stats.frechet_distance(stats.fd_statistics(g), ref_fd)
    if "kid" in which:
        size = kid_size(len(g), len(r), kid_subset_size)
        out[f"kid_{kind}"], out[f"kid_{kind}_std"] = stats.kid(g, r, size, 100, seed)
    if "prc" in which:
        radii = ref_stats.get("radii") if ref_stats is not None else None
        out[f"precision_{kind}"], out[f"recall_{kind}"] = stats.precision_recall(
            g, r, PRC_K, 10000, real_radii=radii
        )
    if "is" in which and "logits" in gen:
        out[f"is_{kind}"] = stats.inception_score(gen["logits"].float(), 10, seed)[0]
    return {k: float(np.float64(v)) for k, v in out.items()}


def compute_metrics(
    generated,
    reference: dict,
    extractor=None,
    which=("fd", "kid", "prc", "is"),
    kid_subset_size: int | None = None,
    device="cpu",
) -> dict:
    """Metrics of generated uint8 images (tensor or iterable of batches) against reference
    features from :func:`reference_features` (same extractor kind)."""
    kind = reference["key"]["extractor"]
    extractor = extractor or build_extractor(kind, device)
    gen = extract_features(extractor, generated)
    return metrics_from_features(
        gen, reference["features"], kind, which, kid_subset_size, ref_stats=reference.get("stats")
    )
