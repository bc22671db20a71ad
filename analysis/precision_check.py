"""Does bf16 change the numbers? Training precision and sampling precision, each against seeds.

    python analysis/precision_check.py --fp32 SWEEP_OR_CSV --bf16 SWEEP [--resample]

**Training.** Rows of fp32-trained runs (a sweep, or a ``convergence_data.csv`` written by
``convergence_plot.py``) and of bf16-trained runs of the same config, matched by method and
step (one config gives the same evaluation steps). At each evaluation point: the mean FD
over seeds in each precision, the seed std of each, and whether |mean_bf16 − mean_fp32| is
below the seed std (the larger of the two). Seeds set the bar: a precision effect smaller
than what another seed does cannot change a ranking that seeds do not already change.

**Sampling** (``--resample``): the final EMA weights of every bf16-trained run, sampled under
the run's evaluation protocol (same labels, noise, steps) in fp32 and in bf16 autocast, both
scored against the same reference: the FD difference per run, and its mean against the seed
std of the fp32-sampled FDs.

Writes precision_training.csv and precision_sampling.csv beside ``--out``.
"""

from __future__ import annotations

import argparse
import glob
import os
import time

import pandas as pd
import torch

from analysis.sweeps import headline_metric, read_sweep
from shared.io import atomic_write_text


def rows_of(source: str) -> pd.DataFrame:
    """Evaluation rows of a sweep folder or of a convergence_data.csv."""
    if source.endswith(".csv"):
        return pd.read_csv(source)
    metrics, _ = read_sweep(source)
    return metrics


def compare_training(fp32: pd.DataFrame, bf16: pd.DataFrame, metric: str) -> pd.DataFrame:
    out = []
    for method in sorted(set(fp32["method"]) & set(bf16["method"])):
        a, b = fp32[fp32["method"] == method], bf16[bf16["method"] == method]
        for step in sorted(set(a["step"]) & set(b["step"])):
            fa, fb = a[a["step"] == step][metric], b[b["step"] == step][metric]
            if min(len(fa), len(fb)) < 2:
                raise ValueError(
                    f"{method} step {step}: fewer than 2 seeds in one precision; "
                    "a seed std needs at least two"
                )
            noise = max(fa.std(), fb.std())
            diff = fb.mean() - fa.mean()
            out.append(
                {
                    "method": method,
                    "step": step,
                    "seeds_fp32": len(fa),
                    "seeds_bf16": len(fb),
                    f"{metric}_fp32": fa.mean(),
                    "std_fp32": fa.std(),
                    f"{metric}_bf16": fb.mean(),
                    "std_bf16": fb.std(),
                    "diff": diff,
                    "seed_std": noise,
                    "within_seed_std": abs(diff) < noise,
                }
            )
    if not out:
        raise ValueError("no method and evaluation step in common between the two sets of runs")
    return pd.DataFrame(out)


def compare_sampling(run_dirs: list[str], device: str = "cpu") -> pd.DataFrame:
    from experiments.runner.build import load_trained
    from experiments.runner.evaluation import Evaluator
    from experiments.runner.labels import method_label

    out = []
    for run in run_dirs:
        cfg, tok, method, model = load_trained(run, device)
        row = {"run": os.path.basename(run), "method": method_label(cfg), "seed": cfg.seed}
        for prec in ("fp32", "bf16"):
            cfg.eval.precision = prec
            evaluator = Evaluator(cfg, tok, method, torch.device(device), run)
            t0 = time.time()
            images, _, _ = evaluator.sample_images(model)
            row[f"sample_s_{prec}"] = time.time() - t0
            scored = evaluator.score(images)
            key = "fd_fashion" if "fd_fashion" in scored else "fid_inception"
            row[f"fd_{prec}"] = scored[key]
        row["diff"] = row["fd_bf16"] - row["fd_fp32"]
        print(
            f"{row['run']}: FD fp32 {row['fd_fp32']:.3f}, bf16 {row['fd_bf16']:.3f} (sampling "
            f"{row['sample_s_fp32']:.1f} s vs {row['sample_s_bf16']:.1f} s)"
        )
        out.append(row)
    return pd.DataFrame(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--fp32", required=True, help="fp32-trained runs: a sweep or a CSV of rows")
    ap.add_argument("--bf16", required=True, help="the bf16-trained sweep of the same config")
    ap.add_argument(
        "--resample",
        action="store_true",
        help="also sample each bf16 run's last weights in fp32 and bf16",
    )
    ap.add_argument("--out", default=None, help="folder for the CSVs (default: <bf16>/analysis)")
    args = ap.parse_args(argv)
    out_dir = args.out or os.path.join(args.bf16, "analysis")
    os.makedirs(out_dir, exist_ok=True)
    fp32, bf16 = rows_of(args.fp32), rows_of(args.bf16)
    for name, df, want in (("--fp32", fp32, "fp32"), ("--bf16", bf16, "bf16")):
        if "train_precision" not in df:  # e.g. a convergence_data.csv written before it
            raise SystemExit(
                f"{name} rows do not record train_precision, so they cannot show they were "
                f"trained in {want}; pass the sweep folder itself, or a convergence_data.csv "
                "written by today's analysis/convergence_plot.py (it records the precision)"
            )
        got = set(df["train_precision"].fillna("unrecorded"))
        if got != {want}:
            raise SystemExit(f"{name} rows were trained in {sorted(got)}, not {want}")
    sampled = {p for df in (fp32, bf16) for p in df.get("eval_precision", pd.Series(["fp32"]))}
    if len(sampled) > 1:
        raise SystemExit(
            f"the two sets sampled in {sorted(sampled)}: compare training with one "
            "sampling precision (eval.precision)"
        )
    metric = headline_metric(bf16)
    train = compare_training(fp32, bf16, metric)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(train.round(3).to_string(index=False))
    n_ok = int(train["within_seed_std"].sum())
    print(f"\ntraining: |bf16 − fp32| below the seed std at {n_ok} of {len(train)} points")
    atomic_write_text(os.path.join(out_dir, "precision_training.csv"), train.to_csv(index=False))
    if args.resample:
        runs = sorted(
            r
            for r in glob.glob(os.path.join(args.bf16, "*_seed*"))
            if os.path.isfile(os.path.join(r, "checkpoints", "last.pt"))
        )
        samp = compare_sampling(runs)
        for method, grp in samp.groupby("method"):
            print(
                f"sampling {method}: mean bf16 − fp32 {grp['diff'].mean():+.3f} (per run "
                f"{', '.join(f'{d:+.2f}' for d in grp['diff'])}); seed std of fp32-sampled "
                f"FD {grp['fd_fp32'].std():.3f}; time bf16/fp32 "
                f"{grp['sample_s_bf16'].sum() / grp['sample_s_fp32'].sum():.2f}"
            )
        atomic_write_text(os.path.join(out_dir, "precision_sampling.csv"), samp.to_csv(index=False))
    return train


if __name__ == "__main__":
    main()
