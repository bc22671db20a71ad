"""Two measurements of the evaluation arithmetic on a trained run's own samples.

    python analysis/metric_arithmetic_check.py RUN_DIR [RUN_DIR …] --out analysis/results/X

1. **The matrix square root of the FD.** torch-fidelity (and this project, ``shared/metrics/
   stats.py``) sums √λ of the eigenvalues of Σ₁Σ₂; ADM's evaluator and pytorch-fid take
   ``scipy.linalg.sqrtm(Σ₁Σ₂)`` and its trace. Both are computed here on the same features (the
   run's protocol samples against its reference), and their difference is reported.
2. **The snap to the codebook under bf16 sampling.** The continuous methods end on the nearest
   code of their final state. The same bf16-autocast trajectories are snapped twice: in float32
   (``shared/codebook.py`` today) and in bf16 (what the search did inside autocast before), and
   both image sets are scored: the share of codes that differ and the FD of each.

Writes ``metric_arithmetic_check.csv`` (one row per run and measurement).
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import pandas as pd
import torch

from experiments.runner.build import load_trained
from experiments.runner.evaluation import Evaluator
from shared.io import atomic_write_text
from shared.metrics import extract_features
from shared.metrics.stats import fd_statistics, frechet_distance


def fd_sqrtm(s1: dict, s2: dict) -> float:
    """ADM's / pytorch-fid's form: tr √(Σ₁Σ₂) by scipy.linalg.sqrtm (real part)."""
    from scipy import linalg

    diff = s1["mu"] - s2["mu"]
    covmean = linalg.sqrtm(s1["sigma"].dot(s2["sigma"]))
    return float(
        diff.dot(diff) + np.trace(s1["sigma"]) + np.trace(s2["sigma"]) - 2 * np.trace(covmean.real)
    )


def bf16_snap(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """The nearest-code search as it ran inside bf16 autocast before: the cross term in bf16."""
    b, d, h, w = z.shape
    flat = z.permute(0, 2, 3, 1).reshape(-1, d).float()
    with torch.autocast(z.device.type, dtype=torch.bfloat16):
        cross = flat @ codebook.T
    dist = (flat.pow(2).sum(1, keepdim=True) - 2 * cross.float()) + codebook.pow(2).sum(1)
    return dist.argmin(1).view(b, h, w)


def measure(run_dir: str) -> list[dict]:
    import methods.latent_flow as latent_flow

    cfg, tok, method, model = load_trained(run_dir, "cpu")
    evaluator = Evaluator(cfg, tok, method, torch.device("cpu"), os.path.join(run_dir, "analysis"))
    rows = []
    base = {
        "run": os.path.basename(os.path.normpath(run_dir)),
        "method": cfg.method.name,
        "num_samples": cfg.eval.num_samples,
        "reference": evaluator.identity["reference"],
    }
    # 1. the FD's matrix square root, on the run's own fp32 protocol samples
    images, _, _ = evaluator.sample_images(model)
    gen = extract_features(evaluator.extractor, images)["feat"].double()
    ref = evaluator.reference["features"]["feat"].double()
    g, r = fd_statistics(gen), fd_statistics(ref)
    eig, sq = frechet_distance(g, r), fd_sqrtm(g, r)
    rows.append(
        {
            **base,
            "measurement": "fd: eigvals (ours, torch-fidelity) vs sqrtm (ADM)",
            "a": eig,
            "b": sq,
            "diff": eig - sq,
            "rel_diff": (eig - sq) / sq,
        }
    )
    if method.input_kind != "latent":
        return rows
    # 2. the snap under bf16 sampling: the same trajectories, snapped in fp32 and in bf16
    finals = []
    real_nearest = latent_flow.nearest_code

    def keep_final(z, codebook, chunk=1 << 24):
        finals.append(z.detach().clone())
        return real_nearest(z, codebook, chunk)

    evaluator.precision = "bf16"
    latent_flow.nearest_code = keep_final
    try:
        fp32_snapped, _, _ = evaluator.sample_images(model)
    finally:
        latent_flow.nearest_code = real_nearest
    z = torch.cat(finals)
    a, b = real_nearest(z, method.codebook), bf16_snap(z, method.codebook)
    bf16_snapped = torch.cat([tok.decode(b[i : i + 250]) for i in range(0, len(b), 250)])
    fd_a, fd_b = (
        evaluator.score(fp32_snapped)[fd_key(evaluator)],
        evaluator.score(bf16_snapped)[fd_key(evaluator)],
    )
    rows.append(
        {
            **base,
            "measurement": "bf16 sampling: snap in fp32 vs in bf16",
            "a": fd_a,
            "b": fd_b,
            "diff": fd_a - fd_b,
            "rel_diff": (fd_a - fd_b) / fd_b,
            "codes_differing": float((a != b).float().mean()),
        }
    )
    return rows


def fd_key(evaluator) -> str:
    return "fd_fashion" if evaluator.cfg.eval.extractor == "fashion" else "fid_inception"


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    rows = [row for run in args.runs for row in measure(run)]
    df = pd.DataFrame(rows)
    os.makedirs(args.out, exist_ok=True)
    atomic_write_text(os.path.join(args.out, "metric_arithmetic_check.csv"), df.to_csv(index=False))
    print(df.to_string(index=False, float_format="%.6g"))
    return df


if __name__ == "__main__":
    main()
