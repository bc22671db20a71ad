"""Build the fixed artifacts with the project's seeded recipes, and compare or install them.

    python experiments/build_artifacts.py            # rebuild into the cache, compare
    python experiments/build_artifacts.py --install  # maintainers: ship the rebuilt ones
    python experiments/build_artifacts.py --only fashion-vq-k4096 --install   # one of them

The shipped Fashion-MNIST tokenizer and ``fd_fashion`` network live in ``shared/artifacts/``
with their sha256 checksums and the numbers they reproduce (``manifest.json``); runs never
retrain them. Rebuilding on another machine gives other weights (CPU training is not
bit-reproducible across machines), so a run that points ``tokenizer.path`` or
``eval.metric_net`` at a rebuilt one warns that its numbers are not comparable with the
shipped ones. ``--install`` replaces the shipped artifacts and their manifest: every number
measured with the old ones stops being comparable, so do it deliberately and say so.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import time

from shared import artifacts
from shared.data import load_fashion_mnist
from shared.io import atomic_write_text
from shared.metrics.fashion_cnn import (
    FashionCNNConfig,
    classifier_dir,
    load_classifier,
    test_accuracy,
    train_classifier,
)
from shared.tokenizers.fashion import (
    RECIPES,
    FashionVQ,
    evaluate_reconstruction,
    tokenizer_dir,
    train_fashion_vq,
)

DEFAULT = (artifacts.TOKENIZER, artifacts.METRIC_NET)  # what every run measures with
# what each artifact ships (paths relative to its folder); identities cover the weights only
TOKENIZER_FILES = [
    "model/config.json",
    "model/diffusion_pytorch_model.safetensors",
    "tokenizer.json",
]
FILES = {
    **dict.fromkeys(artifacts.TOKENIZERS, TOKENIZER_FILES),
    artifacts.METRIC_NET: ["model.safetensors", "meta.json"],
}


def tokenizer_numbers(tok, data_root=None) -> dict:
    """PSNR, code usage and perplexity on the 10k test images (what the manifest records)."""
    test, _ = load_fashion_mnist(data_root, "test", tok.image_size)
    return evaluate_reconstruction(tok, test)


def build(force: bool, data_root=None, names=DEFAULT) -> dict[str, str]:
    """Train (or find cached) each artifact of ``names`` from its seeded recipe; returns
    {name: folder}."""
    built = {}
    for name in names:
        if name in artifacts.TOKENIZERS:
            cfg = dataclasses.replace(RECIPES[name], data_root=data_root)
            folder = tokenizer_dir(cfg)
            if force or not os.path.isfile(os.path.join(folder, "tokenizer.json")):
                print(f"==> training tokenizer {name} into {folder} (≈4 min on 2 cores)")
                train_fashion_vq(cfg, folder)
        else:
            net_cfg = FashionCNNConfig()
            folder = classifier_dir(net_cfg)
            if force or not os.path.isfile(os.path.join(folder, "model.safetensors")):
                print(f"==> training the fd_fashion network into {folder} (≈1 min on 2 cores)")
                train_classifier(net_cfg, data_root, out=folder)
        built[name] = folder
    return built


def describe(built: dict[str, str], data_root=None) -> dict:
    t0 = time.time()
    out = {}
    for name, folder in built.items():
        if name in artifacts.TOKENIZERS:
            tok = FashionVQ.load(folder)
            out[name] = {
                "digest": tok.weights_sha256,
                "recorded": tokenizer_numbers(tok, data_root),
            }
        else:
            net = load_classifier(folder)
            out[name] = {
                "digest": net.sha256,
                "recorded": {"test_accuracy": test_accuracy(net, data_root)},
            }
    print(f"(evaluated in {time.time() - t0:.1f} s)")
    return out


def install(built: dict[str, str], described: dict) -> None:
    # the other shipped artifacts (e.g. trained runs, experiments/shipped_runs.py) are kept
    entries = {k: v for k, v in artifacts.manifest().items() if k not in built}
    for name, folder in built.items():
        dest = artifacts.ARTIFACTS_DIR / name
        shutil.rmtree(dest, ignore_errors=True)
        files = {}
        for rel in FILES[name]:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(os.path.join(folder, rel), dest / rel)
            if rel == "tokenizer.json":  # its id names the weights (as FashionVQ.load does)
                meta = json.loads((dest / rel).read_text())
                meta["id"] = f"fashion-vq-{described[name]['digest'][:12]}"
                (dest / rel).write_text(json.dumps(meta, indent=2) + "\n")
            files[rel] = artifacts.sha256_file(dest / rel)
        size = sum(os.path.getsize(dest / rel) for rel in files)
        entries[name] = {
            **described[name],
            "files": files,
            "bytes": size,
            "built_by": "python experiments/build_artifacts.py --install"
            + ("" if name in DEFAULT else f" --only {name}"),
            "built_on": time.strftime("%Y-%m-%d"),
        }
    atomic_write_text(artifacts.MANIFEST, json.dumps(entries, indent=2) + "\n")
    print(f"installed into {artifacts.ARTIFACTS_DIR}; commit shared/artifacts/")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--force", action="store_true", help="retrain even when cached")
    ap.add_argument("--install", action="store_true", help="replace the shipped artifacts")
    ap.add_argument("--data-root", default=None, help="Fashion-MNIST folder (default: Debian's)")
    ap.add_argument(
        "--only",
        nargs="+",
        default=list(DEFAULT),
        choices=[*artifacts.TOKENIZERS, artifacts.METRIC_NET],
        help="the artifacts to build (default: the tokenizer and network every run uses)",
    )
    args = ap.parse_args(argv)
    built = build(args.force, args.data_root, args.only)
    described = describe(built, args.data_root)
    for name, d in described.items():
        try:
            same = d["digest"] == artifacts.shipped_digest(name)
        except (artifacts.ArtifactError, KeyError):
            same = None
        verdict = {
            True: "identical to the shipped one",
            False: "DIFFERS from the shipped one",
            None: "no shipped one yet",
        }[same]
        print(f"{name}: {d['digest'][:12]} {verdict}; {json.dumps(d['recorded'])}")
    if args.install:
        install(built, described)
    return described


if __name__ == "__main__":
    main()
