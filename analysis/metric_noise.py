"""Metric noise against seed spread: is a ranking decided by the training seeds, or by the
sampling noise of the evaluation?

    python analysis/metric_noise.py RUN_DIR [RUN_DIR ...] --sweep analysis/results/fashion_cpu
    python analysis/metric_noise.py outputs/shipped/nano1-*-8e13-seed0 --eval-seeds 1234,1,2,3,4
    python analysis/metric_noise.py SWEEP/*_dfm_seed* SWEEP/*_dfm-mdlm_seed* --num-samples 5000 \
        --eval-seeds 1234,1 --out DIR          # a close pair, at 5× the protocol's samples

Metric noise: one run's final EMA weights scored again under its own protocol (labels,
steps, τ, sample count, reference) with only the sampling noise seed (``eval.seed``)
changed; its standard deviation over those seeds is what the evaluation alone adds to one
FD. Seed spread: the standard deviation over training seeds of the final FD of each method
in ``--sweep`` (every run there was scored from the same noise seed). With the ratio
spread / noise well above 1, seed spread, not the metric, decides how far apart two methods
must be to be told apart; both use the sample standard deviation (ddof 1). Given several
training seeds of a method, the noise is pooled within runs and ``run_std`` is their spread
at the sample count scored here (``--num-samples``: the summary is then
``metric_noise_n<N>_summary.csv``).

Each score is one row of ``metric_noise.csv``, written atomically as soon as it is done and
keyed by the run folder, its checkpoint's sha256, the noise seed and the sample count, so a
relaunch redoes only what is missing. ``metric_noise_summary.csv`` holds one row per method.
"""

from __future__ import annotations

import argparse
import os

import pandas as pd

from analysis.sampling_sweep import current_rows, run_key, save_rows
from analysis.sweeps import check_runs, read_sweep, read_table
from experiments.runner.labels import method_label
from shared.io import atomic_write_text, file_sha256

STEM = "metric_noise"


def seed_spread(final: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per method, the training seeds' final ``metric``: count, mean and standard deviation."""
    grouped = final.groupby("method")[metric]
    return pd.DataFrame(
        {
            "train_seeds": grouped.count(),
            "seed_mean": grouped.mean(),
            "seed_std": grouped.std(ddof=1),
        }
    )


def summarise(scores: pd.DataFrame, spread: pd.DataFrame | None) -> pd.DataFrame:
    """Per method: the noise seeds' count and mean ``fd``, and the noise standard deviation,
    pooled within runs (√ of the mean within-run variance, each ddof 1), so that several
    training seeds of one method add no seed spread to it. With several runs of a method,
    ``run_std`` is the spread over them of their mean FD at this sample count. Beside them,
    the training seeds' spread from the sweep and the ratio spread / noise."""
    if "path" not in scores:  # one run per method
        scores = scores.assign(path=scores["method"])
    per_run = scores.groupby(["method", "path"])["fd"]
    runs = per_run.agg(["mean", "var"]).reset_index()
    grouped = runs.groupby("method")
    out = pd.DataFrame(
        {
            "runs": grouped["path"].count(),
            "eval_seeds": scores.groupby("method")["fd"].count(),
            "noise_mean": scores.groupby("method")["fd"].mean(),
            "noise_std": grouped["var"].mean() ** 0.5,
            "run_std": grouped["mean"].std(ddof=1),
        }
    )
    if spread is not None:
        out = out.join(spread, how="left")
        out["spread_over_noise"] = out["seed_std"] / out["noise_std"]
    return out.reset_index()


def final_rows(sweeps: list[str]) -> pd.DataFrame:
    """Every run's last evaluation in these sweeps (only finished budgets)."""
    metrics, _ = read_sweep(sweeps)
    metrics = metrics[metrics["budget_fraction"] >= 1.0]
    return metrics.sort_values("step").groupby("run").tail(1)


def score_run(
    run_dir: str,
    eval_seeds: list[int],
    rows: list[dict],
    csv_path: str,
    device: str,
    measured: dict,
    num_samples: int | None = None,
) -> list[dict]:
    """Score ``run_dir`` at every noise seed not yet in ``rows``, saving after each, with
    ``num_samples`` images (default: the run's protocol); ``measured`` gets the run's
    (checkpoint sha256, sample count), as ``current_rows`` reads."""
    import torch

    from experiments.runner.build import load_trained
    from experiments.runner.evaluation import Evaluator

    path = run_key(run_dir, csv_path)
    checkpoint_sha = file_sha256(os.path.join(run_dir, "checkpoints", "last.pt"))[:16]
    cfg, tok, method, model = load_trained(run_dir, device)
    if num_samples:
        cfg.eval.num_samples = num_samples
    num_samples = int(cfg.eval.num_samples)
    measured[path] = (checkpoint_sha, num_samples)
    have = {
        (r["path"], r["checkpoint_sha256"], int(r["eval_seed"]), int(r["num_samples"]))
        for r in rows
    }
    todo = [s for s in eval_seeds if (path, checkpoint_sha, s, num_samples) not in have]
    if not todo:
        print(f"{run_dir}: all {len(eval_seeds)} noise seeds done")
        return rows
    evaluator = Evaluator(cfg, tok, method, torch.device(device), os.path.dirname(csv_path))
    kind = cfg.eval.extractor
    for eval_seed in todo:
        cfg.eval.seed = eval_seed
        images, _, _ = evaluator.sample_images(model)
        scores = evaluator.score(images)
        row = {
            "path": path,
            "method": method_label(cfg),
            "seed": cfg.seed,
            "checkpoint_sha256": checkpoint_sha,
            "eval_seed": eval_seed,
            "num_samples": num_samples,
            "fd": scores.get("fd_fashion", scores.get("fid_inception")),
            "precision": scores.get(f"precision_{kind}"),
            "recall": scores.get(f"recall_{kind}"),
            "extractor": kind,
            **evaluator.identity,
        }
        rows.append(row)
        save_rows(csv_path, rows)
        print(f"{run_dir} noise seed {eval_seed}: FD {row['fd']:.3f}", flush=True)
    return rows


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="trained run folders (e.g. the shipped weights)")
    ap.add_argument(
        "--eval-seeds",
        default="1234,1,2,3,4",
        help="sampling noise seeds (1234: the protocol's own)",
    )
    ap.add_argument(
        "--sweep",
        action="append",
        default=[],
        help="sweep folder whose training seeds give the seed spread (repeatable)",
    )
    ap.add_argument(
        "--num-samples",
        type=int,
        default=None,
        help="images per score (default: each run's eval.num_samples); the noise falls as 1/√n",
    )
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    eval_seeds = [int(s) for s in args.eval_seeds.split(",")]
    if len(set(eval_seeds)) < 2:
        raise SystemExit("error: --eval-seeds needs at least two distinct seeds for a spread")
    if args.num_samples is not None and args.num_samples < 2:
        raise SystemExit(f"error: --num-samples must be ≥ 2, got {args.num_samples}")
    runs = check_runs(args.runs)
    os.makedirs(args.out, exist_ok=True)
    csv_path = os.path.join(args.out, f"{STEM}.csv")
    rows = read_table(csv_path).to_dict("records") if os.path.isfile(csv_path) else []
    measured: dict = {}
    for run in runs:
        rows = score_run(run, eval_seeds, rows, csv_path, args.device, measured, args.num_samples)
    # only these runs' current checkpoints at their sample count: older rows stay in the file
    scores = pd.DataFrame(current_rows(rows, measured))
    spread = None
    if args.sweep:
        final = final_rows(args.sweep)
        # the column the noise rows' ``fd`` reads first (not headline_metric, which prefers
        # fid_inception when a sweep has both)
        metric = "fd_fashion" if final["fd_fashion"].notna().any() else "fid_inception"
        spread = seed_spread(final, metric)
    summary = summarise(scores, spread)
    stem = STEM if args.num_samples is None else f"{STEM}_n{args.num_samples}"
    out_csv = os.path.join(args.out, f"{stem}_summary.csv")
    atomic_write_text(out_csv, summary.to_csv(index=False))
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f"wrote {csv_path}, {out_csv}")
    return summary


if __name__ == "__main__":
    main()
