"""Quality against sampling budget: FD (and KID, precision, recall) vs NFE, for every method
and solver, on the same trained weights.

    python analysis/nfe_sweep.py RUN_DIR [RUN_DIR ...] --out DIR
    python analysis/nfe_sweep.py RUNS --nfe 2,5,10,20,50,100 --tolerances 1e-1,1e-2,1e-3,1e-4

Solvers per method (each at NFE ≈ every value of ``--nfe``; NFE is what the sampler counted):
- cfm, cfm-endpoint, purr: euler (steps = n), heun (steps = (n + 1)/2, NFE 2·steps − 1),
  midpoint (steps = n/2, NFE 2·steps), and dopri5 (torchdiffeq's adaptive Dormand–Prince,
  rtol = atol = each of ``--tolerances``: its NFE is the model calls it made, averaged over
  the protocol's image batches);
- dfm (masked source): euler (carry-over) and maskgit (steps ≤ the latent positions);
- dfm (uniform source), dfm-metric: euler.
``--solvers`` restricts the list. Every point samples the run's own protocol (labels, noise
seed, τ, CFG, EMA weights) with only the solver and its budget changed: see
``analysis/sampling_sweep.py``, which also makes the sweep resumable point by point.

Writes ``nfe_sweep.csv`` (a row per run × solver × budget: ``method``, ``solver``, ``steps``,
``tolerance``, ``nfe``, ``fd``, ``kid``, ``precision``, ``recall``, the run's identity) and
``nfe_sweep.{png,pdf}``: FD vs NFE, one colour per method, one line style per solver, the
mean over seeds with the seeds' range shaded.
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from omegaconf import OmegaConf

from analysis.sampling_sweep import add_run_args, check_one_measurement, curve_groups, sweep_cli
from analysis.sweeps import save_figure
from methods.records import record

STYLE = {"euler": "-", "heun": "--", "midpoint": ":", "dopri5": "-.", "maskgit": (0, (5, 1, 1, 1))}
MARKER = {"euler": "o", "heun": "s", "midpoint": "^", "dopri5": "D", "maskgit": "v"}


def solvers_of(name: str, options: dict | None = None) -> list[str]:
    """The samplers the sweep compares for a method with these options (its record's, less
    the official code's redraw variant of Euler, which sampling_sweep's own rows cover)."""
    rec = record(name)
    values = {**rec.defaults(), **(options or {})}
    fixed = [s for s in rec.solvers if s != "euler-redraw" and not rec.solver_rules(s, values)]
    return fixed + list(rec.adaptive_solvers)


def steps_for(solver: str, nfe: int) -> int:
    """Fixed-grid steps whose NFE is closest to ``nfe`` (at least one step)."""
    if solver == "heun":
        return max(1, (nfe + 1) // 2)
    if solver == "midpoint":
        return max(1, nfe // 2)
    return max(1, nfe)


def points(name, options, nfes, tolerances, only=None, positions=None) -> list[dict]:
    out = []
    for solver in solvers_of(name, options):
        if only and solver not in only:
            continue
        if solver == "dopri5":
            out += [{"solver": solver, "tolerance": tol} for tol in tolerances]
            continue
        steps = sorted({steps_for(solver, n) for n in nfes})
        if solver == "maskgit" and positions:
            steps = [s for s in steps if s <= positions] or [positions]
        out += [{"solver": solver, "steps": s} for s in steps]
    return out


def plot(df: pd.DataFrame, out_dir: str) -> list[str]:
    metrics = [("fd", "FD (in-domain) ↓"), ("precision", "precision ↑"), ("recall", "recall ↑")]
    if df["extractor"].iloc[0] != "fashion":
        metrics[0] = ("fd", "FID (Inception) ↓")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    check_one_measurement(df)  # one measurement per (run, setting): means are over seeds only
    for i, (name, grp) in enumerate(curve_groups(df)):
        colour = colours[i % len(colours)]
        for solver, s in grp.groupby("solver", sort=False):
            key = "tolerance" if solver == "dopri5" else "steps"
            agg = (
                s.groupby(key)
                .agg(
                    nfe=("nfe", "mean"),
                    seeds=("seed", "nunique"),
                    **{f"{m}_{f}": (m, f) for m, _ in metrics for f in ("mean", "min", "max")},
                )
                .sort_values("nfe")
            )
            seeds = int(agg["seeds"].max())
            label = f"{name} {solver}" + (f" ({seeds} seeds)" if seeds > 1 else "")
            for ax, (m, _) in zip(axes, metrics, strict=True):
                ax.plot(
                    agg["nfe"],
                    agg[f"{m}_mean"],
                    color=colour,
                    linestyle=STYLE[solver],
                    marker=MARKER[solver],
                    markersize=4,
                    label=label,
                )
                if seeds > 1:
                    ax.fill_between(
                        agg["nfe"], agg[f"{m}_min"], agg[f"{m}_max"], color=colour, alpha=0.12
                    )
    for ax, (_, label) in zip(axes, metrics, strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("NFE (model calls per sample; CFG's two halves count once)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=7, ncol=2)
    n = int(df["num_samples"].iloc[0])
    fig.suptitle(
        f"Quality vs sampling budget: the same trained weights under each solver "
        f"({n} samples per point, the runs' own labels and noise; dopri5: tolerances "
        f"{', '.join(f'{t:g}' for t in sorted(df['tolerance'].dropna().unique()))})",
        fontsize=9,
    )
    fig.tight_layout()
    return save_figure(fig, out_dir, "nfe_sweep")


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_run_args(ap)
    ap.add_argument("--nfe", default="2,5,10,20,50,100", help="target NFEs (fixed-grid solvers)")
    ap.add_argument("--tolerances", default="1e-1,1e-2,1e-3,1e-4", help="dopri5 rtol = atol")
    ap.add_argument("--solvers", default=None, help="only these solvers (default: all)")
    args = ap.parse_args(argv)
    nfes = [int(x) for x in args.nfe.split(",")]
    tols = [float(x) for x in args.tolerances.split(",")]
    if min(nfes) < 1 or not all(0 < t < 1 for t in tols):
        raise SystemExit(f"error: --nfe must be ≥ 1 and --tolerances in (0, 1): {nfes}, {tols}")
    only = set(args.solvers.split(",")) if args.solvers else None

    def points_for(cfg, tok):
        positions = tok.grid[0] * tok.grid[1]
        options = OmegaConf.to_container(cfg.method, resolve=True)
        return points(cfg.method.name, options, nfes, tols, only, positions)

    return sweep_cli(args, "nfe_sweep", points_for, plot)


if __name__ == "__main__":
    main()
