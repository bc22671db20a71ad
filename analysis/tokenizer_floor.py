"""The floor of each tokenizer: the FD of its reconstructions of held-out real images (no
generator can score below what its tokenizer decodes), beside the FD of the real images
themselves (the metric's own noise at that sample count), as every run's summary records them.

    python analysis/tokenizer_floor.py --tokenizers fashion,fashion_k4096 \\
        --num-samples 1000,5000 --out analysis/results/fashion_frontier/codebook

Writes tokenizer_floor.csv: tokenizer (its name and sha256), codes K, code size, sample
count, fd_recon, fd_real. Cached per identity like a run's baselines.
"""

from __future__ import annotations

import argparse
import os
import sys

import pandas as pd
import torch

from shared.io import atomic_write_text


def floors(tokenizers: list[str], counts: list[int], device: str = "cpu") -> pd.DataFrame:
    from experiments.pack import compose_all
    from experiments.runner.build import build_method_and_model, load_tokenizer
    from experiments.runner.evaluation import Evaluator

    pairs = [(name, n) for name in tokenizers for n in counts]
    jobs = [
        [f"tokenizer={name}", "method=cfm", f"eval.num_samples={n}", "progress=false"]
        for name, n in pairs
    ]
    rows = []
    for (name, n), cfg in zip(pairs, compose_all(jobs), strict=True):
        tok = load_tokenizer(cfg)
        method, _ = build_method_and_model(cfg, tok, torch.device(device))
        ev = Evaluator(cfg, tok, method, torch.device(device), None)
        k, d = tok.codebook.shape
        rows.append(
            {
                "tokenizer": name,
                "tokenizer_sha256": (tok.weights_sha256 or "")[:12],
                "codes": k,
                "code_dim": d,
                "num_samples": n,
                "fd_recon": ev.baselines["fd_recon"],
                "fd_real": ev.baselines["fd_real"],
            }
        )
        print(f"{name} (K={k}) n={n}: fd_recon {rows[-1]['fd_recon']:.2f}", flush=True)
    return pd.DataFrame(rows)


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tokenizers", default="fashion,fashion_k4096", help="tokenizer= options")
    ap.add_argument("--num-samples", default="1000,5000")
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    table = floors(
        args.tokenizers.split(","), [int(n) for n in args.num_samples.split(",")], args.device
    )
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "tokenizer_floor.csv")
    atomic_write_text(path, table.to_csv(index=False))
    print(f"wrote {path}")
    return table


if __name__ == "__main__":
    main(sys.argv[1:])
