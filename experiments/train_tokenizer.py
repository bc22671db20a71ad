"""Train the default Fashion-MNIST VQ tokenizer (cached by config; reused when present).

    python experiments/train_tokenizer.py                     # defaults: K=256, d=4, f=4
    python experiments/train_tokenizer.py --num-codes 512 --steps 1000 --force

Prints and saves (in ``tokenizer.json`` next to the diffusers weights) the test-split
reconstruction PSNR, codebook usage and perplexity.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import fields

from shared.tokenizers.fashion import FashionVQConfig, tokenizer_dir, train_fashion_vq


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    defaults = FashionVQConfig()
    for f in fields(FashionVQConfig):
        if f.name in ("block_out_channels", "data_root"):
            continue
        ap.add_argument(f"--{f.name.replace('_', '-')}", type=type(getattr(defaults, f.name)),
                        default=getattr(defaults, f.name))  # fmt: skip
    ap.add_argument("--channels", default=",".join(map(str, defaults.block_out_channels)),
                    help="encoder/decoder widths per level (levels−1 = log2 f)")  # fmt: skip
    ap.add_argument("--data-root", default=None, help="Fashion-MNIST folder (default: Debian's)")
    ap.add_argument("--force", action="store_true", help="retrain even when cached")
    args = ap.parse_args()
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


if __name__ == "__main__":
    main()
