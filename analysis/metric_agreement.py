"""Does the order of the objectives depend on the metric? Each run's final weights are scored
with fd_fashion and with Inception FID (torch-fidelity's network, the project's offline
weights) on the same samples (one sampling setting, one noise seed), and the two orders of the
objectives are compared: Kendall's τ over the objectives' seed means, and every pair that the
two metrics order differently.

    python analysis/metric_agreement.py RUNS --num-samples 5000 --out DIR
    python analysis/metric_agreement.py --points DIR/metric_points.csv --out DIR   # re-read

Every score is a row of ``<out>/metric_points.csv`` (the resumable engine of
``sampling_sweep.py``: a killed run loses at most one score). Writes
``metric_agreement.csv`` (per objective: seeds, each metric's mean and rank) and prints τ,
its two-sided p-value, and the pairs ordered differently.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys

import numpy as np
import pandas as pd

from shared.io import atomic_write_text
from shared.refusal import refuse

METRICS = {"fashion": "fd_fashion", "inception": "fid_inception"}


def agreement(means: pd.DataFrame, a: str, b: str) -> dict:
    """Kendall's τ-b of two metrics over the objectives (rows of ``means``, lower is better),
    its two-sided p-value, and the pairs the two order differently."""
    from scipy.stats import kendalltau

    tau, p = kendalltau(means[a], means[b])
    discordant = [
        (x, y)
        for x, y in itertools.combinations(means.index, 2)
        if np.sign(means.loc[x, a] - means.loc[y, a]) != np.sign(means.loc[x, b] - means.loc[y, b])
    ]
    return {"tau": float(tau), "p": float(p), "discordant": discordant, "n": len(means)}


def table(points: pd.DataFrame) -> pd.DataFrame:
    """Per objective: seeds, and each metric's mean over them (a run scored by one metric only
    is left out of both, so the two means are of the same runs)."""
    wide = points.pivot_table(index=["method", "seed"], columns="extractor", values="fd")
    missing = [e for e in METRICS if e not in wide]
    if missing:
        refuse(f"no run was scored with {', '.join(missing)}: nothing to compare")
    wide = wide.dropna(subset=list(METRICS))
    out = wide.groupby(level="method").agg(["mean", "count"])
    means = pd.DataFrame(
        {
            "seeds": out[("fashion", "count")].astype(int),
            **{METRICS[e]: out[(e, "mean")] for e in METRICS},
        }
    )
    for e in METRICS:
        means[f"rank_{METRICS[e]}"] = means[METRICS[e]].rank().astype(int)
    return means.sort_values("fd_fashion")


def score(args) -> pd.DataFrame:
    from analysis.sampling_sweep import check_runs, load_done, run_key, sweep_run
    from shared.metrics.inception import missing_weights_message

    missing = missing_weights_message()
    if missing:
        refuse(missing)
    runs = check_runs(args.runs, args.allow_unfinished)
    csv = os.path.join(args.out, "metric_points.csv")
    rows = load_done(csv).to_dict("records")
    points = [{"extractor": e} for e in METRICS]
    for run in runs:
        rows = sweep_run(run, lambda *_: points, csv, rows, args.device, args.num_samples)
    keep = {run_key(r, csv) for r in runs}
    return pd.DataFrame([r for r in rows if r["path"] in keep])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("runs", nargs="*", help="trained run directories (final weights)")
    ap.add_argument("--points", default=None, help="read these scores instead of sampling")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--num-samples", type=int, default=None, help="default: the run's protocol")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--allow-unfinished", action="store_true")
    args = ap.parse_args(argv)
    if bool(args.runs) == bool(args.points):
        refuse("give either run directories to score, or --points to re-read, not both")
    os.makedirs(args.out, exist_ok=True)
    points = pd.read_csv(args.points) if args.points else score(args)
    means = table(points)
    if len(means) < 3:
        refuse(f"{len(means)} objective(s) scored with both metrics: a rank test needs 3 or more")
    result = agreement(means, "fd_fashion", "fid_inception")
    atomic_write_text(os.path.join(args.out, "metric_agreement.csv"), means.to_csv())
    print(means.to_string())
    print(
        f"Kendall τ = {result['tau']:.3f} over {result['n']} objectives (two-sided p = "
        f"{result['p']:.3g}); ordered differently: "
        + (", ".join(f"{x} vs {y}" for x, y in result["discordant"]) or "none")
    )
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
