"""Quality against classifier-free guidance: FD, precision and recall vs CFG scale, for every
method, on the same trained weights.

    python analysis/guidance_sweep.py RUN_DIR [RUN_DIR ...] --out DIR
    python analysis/guidance_sweep.py RUNS --scales 1,1.5,2,3,4 --solver maskgit

Guidance is ``out_u + s·(out_c − out_u)`` on each method's own output (velocity for cfm,
logits for the categorical methods: ``methods/base.py``), one batched call over both halves;
s = 1 is the conditional model. Every point samples the run's own protocol (labels, noise
seed, steps, τ, EMA weights) with only the scale changed (``--solver`` changes the sampler
for every run that has it, e.g. maskgit for masked dfm). Runs trained without a null class
(``backbone.class_dropout=0``) are refused. Resumable point by point
(``analysis/sampling_sweep.py``).

Writes ``guidance_sweep.csv`` (a row per run × scale: ``method``, ``solver``, ``nfe``,
``cfg_scale``, ``fd``, ``kid``, ``precision``, ``recall``, the run's identity) and
``guidance_sweep.{png,pdf}``: FD vs scale, and precision vs recall annotated with the scale
(mean over seeds; the seeds' range shaded).
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from analysis.sampling_sweep import add_run_args, check_one_measurement, curve_groups, sweep_cli
from analysis.sweeps import save_figure


def plot(df: pd.DataFrame, out_dir: str) -> list[str]:
    check_one_measurement(df)  # one measurement per (run, setting): means are over seeds only
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4.6))
    for name, grp in curve_groups(df):
        for solver, s in grp.groupby("solver", sort=False):
            agg = (
                s.groupby("cfg_scale")
                .agg(
                    seeds=("seed", "nunique"),
                    **{
                        f"{m}_{f}": (m, f)
                        for m in ("fd", "precision", "recall")
                        for f in ("mean", "min", "max")
                    },
                )
                .reset_index()
            )
            seeds = int(agg["seeds"].max())
            label = f"{name} {solver}" + (f" ({seeds} seeds)" if seeds > 1 else "")
            (line,) = a.plot(agg["cfg_scale"], agg["fd_mean"], marker="o", label=label)
            b.plot(agg["cfg_scale"], agg["precision_mean"], marker="o", color=line.get_color())
            b.plot(
                agg["cfg_scale"],
                agg["recall_mean"],
                marker="s",
                linestyle="--",
                color=line.get_color(),
            )
            if seeds > 1:
                for ax, m in ((a, "fd"), (b, "precision"), (b, "recall")):
                    ax.fill_between(
                        agg["cfg_scale"],
                        agg[f"{m}_min"],
                        agg[f"{m}_max"],
                        color=line.get_color(),
                        alpha=0.12,
                    )
            c.plot(
                agg["recall_mean"],
                agg["precision_mean"],
                marker="o",
                label=label,
                color=line.get_color(),
            )
            for _, r in agg.iterrows():
                c.annotate(
                    f"{r['cfg_scale']:g}",
                    (r["recall_mean"], r["precision_mean"]),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
    a.set_ylabel("FD (in-domain) ↓" if df["extractor"].iloc[0] == "fashion" else "FID ↓")
    b.set_ylabel("precision (solid) ↑ / recall (dashed) ↑")
    for ax in (a, b):
        ax.set_xlabel("CFG scale s (1 = conditional, no guidance)")
    c.set_xlabel("recall (diversity) ↑")
    c.set_ylabel("precision (fidelity) ↑")
    for ax in (a, b, c):
        ax.grid(alpha=0.3)
    a.legend(fontsize=7)
    n = int(df["num_samples"].iloc[0])
    fig.suptitle(
        f"Classifier-free guidance: the same trained weights at each scale ({n} samples "
        "per point, the runs' own labels, noise and steps; points labelled by s)",
        fontsize=9,
    )
    fig.tight_layout()
    return save_figure(fig, out_dir, "guidance_sweep")


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_run_args(ap)
    ap.add_argument("--scales", default="1,1.5,2,3,4")
    ap.add_argument("--solver", default=None, help="for the runs that have it (default: own)")
    args = ap.parse_args(argv)
    scales = [float(x) for x in args.scales.split(",")]
    if min(scales) < 0:
        raise SystemExit(f"error: --scales must be ≥ 0, got {args.scales}")

    def points_for(cfg, tok):
        if cfg.backbone.class_dropout <= 0 and any(s != 1 for s in scales):
            raise SystemExit(
                f"error: {cfg.method.name} (seed {cfg.seed}) trained with "
                "backbone.class_dropout=0: it has no unconditional model to "
                "guide with; sweep --scales 1 only, or train with "
                "backbone.class_dropout > 0"
            )
        from methods.records import record

        solvers = record(cfg.method.name).solvers
        solver = args.solver if args.solver in solvers else None
        return [{"cfg_scale": s, "solver": solver} for s in scales]

    return sweep_cli(args, "guidance_sweep", points_for, plot)


if __name__ == "__main__":
    main()
