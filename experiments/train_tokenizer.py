"""The default Fashion-MNIST VQ tokenizer: check the shipped one, or train another.

    python experiments/train_tokenizer.py                        # verify the shipped tokenizer
    python experiments/train_tokenizer.py --rebuild              # retrain the default recipe
    python experiments/train_tokenizer.py --rebuild --num-codes 512 --steps 1000

The tokenizer every run uses by default is shipped in ``shared/artifacts/fashion-vq`` (sha256
checked here and at every run start). ``--rebuild`` trains one with the seeded recipe into
the cache (``tokenizer.json`` records its test-split PSNR, codebook usage and perplexity);
use it with ``tokenizer.path=<printed folder>``. Runs on a rebuilt tokenizer warn that their
numbers are not comparable with the shipped one's.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import fields

from shared.artifacts import TOKENIZER, recorded, shipped
from shared.tokenizers.fashion import FashionVQConfig, tokenizer_dir, train_fashion_vq


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    defaults = FashionVQConfig()
    for f in fields(FashionVQConfig):
        if f.name in ("block_out_channels", "data_root"):
            continue
        ap.add_argument(
            f"--{f.name.replace('_', '-')}",
            type=type(getattr(defaults, f.name)),
            default=getattr(defaults, f.name),
        )
    ap.add_argument(
        "--channels",
        default=",".join(map(str, defaults.block_out_channels)),
        help="encoder/decoder widths per level (levels−1 = log2 f)",
    )
    ap.add_argument("--data-root", default=None, help="Fashion-MNIST folder (default: Debian's)")
    ap.add_argument("--rebuild", action="store_true", help="train one into the cache")
    ap.add_argument("--force", action="store_true", help="with --rebuild: retrain when cached")
    args = ap.parse_args()
    if not args.rebuild:
        print(f"shipped tokenizer (checksums verified): {shipped(TOKENIZER)}")
        print(json.dumps(recorded(TOKENIZER)))
        return
    kw = {f.name: getattr(args, f.name) for f in fields(FashionVQConfig) if hasattr(args, f.name)}
    kw["block_out_channels"] = tuple(int(c) for c in args.channels.split(","))
    cfg = FashionVQConfig(**kw)
    path = tokenizer_dir(cfg)
    if args.force or not os.path.isfile(os.path.join(path, "tokenizer.json")):
        print(f"training into {path}")
        train_fashion_vq(cfg, path)
    else:
        print(f"cached: {path} (use --force to retrain)")
    with open(os.path.join(path, "tokenizer.json")) as f:
        meta = json.load(f)
    print(json.dumps({"id": meta["id"], **meta["test_metrics"], "train_s": meta["train_seconds"]}))
    print(
        f"use it with tokenizer.path={path} (numbers are then not comparable with the shipped "
        "tokenizer's)"
    )


if __name__ == "__main__":
    main()
