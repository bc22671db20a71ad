"""FID (or in-domain FD) against training steps, training FLOPs and wall-clock, per method.

    python analysis/convergence_plot.py                       # the latest sweep in outputs/sweeps
    python analysis/convergence_plot.py outputs/sweeps/X --targets 50,30 --out figs/
    python analysis/convergence_plot.py outputs/sweeps/X outputs/sweeps/Y --out figs/  # together

One line per method: the mean over seeds with a 95% bootstrap confidence band (seaborn).
Writes convergence.{png,pdf}, convergence_metrics.{png,pdf} (KID, precision, recall),
convergence_data.csv (the plotted rows) and summary tables; prints "compute to reach FD X"
and the final metrics per method. Failed or unfinished runs are drawn and named as such,
and left out of the final table (named on stderr).
Horizontal lines: the FD of held-out real images and of the tokenizer's reconstructions of
them, at the same number of samples (the floor, and this tokenizer's ceiling for a perfect
generator). Runs measured with different tokenizers, metric networks or reference sets are
refused (``analysis/sweeps.check_comparable``).
"""

from __future__ import annotations

import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd
import seaborn as sns

from analysis.sweeps import (
    IDENTITY,
    add_sweep_arguments,
    headline_metric,
    left_out_unfinished,
    load_sweep,
    open_sweeps,
    save_figure,
    status_labels,
)
from shared.io import atomic_write_text

AXES = [
    ("step", "training steps"),
    ("train_flops", "training FLOPs"),
    ("wall_s", "training wall-clock (s)"),
]
LABELS = {
    "fd_fashion": "FD (in-domain Fashion CNN) ↓",
    "fid_inception": "FID (Inception) ↓",
    "kid": "KID ↓",
    "precision": "precision ↑",
    "recall": "recall ↑",
}


def log_ticks(ax) -> None:
    """FLOP ticks at 1× and 3× each power of ten, labelled; none at the minor ticks (under two
    decades matplotlib labels those too, and they overlap)."""
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 3.0)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.LogFormatterSciNotation(labelOnlyBase=False))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def compute_to_reach(metrics: pd.DataFrame, metric: str, target: float) -> pd.DataFrame:
    """Per method: FLOPs/steps of the first evaluation with metric ≤ target, averaged over the
    seeds that reach it (and how many of them do)."""
    rows = []
    for (method, seed), grp in metrics.groupby(["method", "seed"]):
        hit = grp.sort_values("step")
        hit = hit[hit[metric] <= target]
        rows.append(
            {
                "method": method,
                "seed": seed,
                "flops": hit["train_flops"].iloc[0] if len(hit) else np.nan,
                "step": hit["step"].iloc[0] if len(hit) else np.nan,
            }
        )
    df = pd.DataFrame(rows)
    return df.groupby("method").agg(
        seeds_reaching=("flops", lambda s: f"{s.notna().sum()}/{len(s)}"),
        train_flops_mean=("flops", "mean"),
        step_mean=("step", "mean"),
    )


def final_table(metrics: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    last = metrics.sort_values("step").groupby(["method", "seed"]).tail(1)
    agg = last.groupby("method")[cols].agg(["mean", "std"])
    agg.columns = [f"{c}_{s}" for c, s in agg.columns]
    agg["seeds"] = last.groupby("method").size()
    return agg


BASELINES = {
    "fd_recon": ("tokenizer ceiling: its reconstructions of real images", "--"),
    "fd_real": ("real images", ":"),
}


def draw_baselines(ax, data: pd.DataFrame, metric: str) -> None:
    """Horizontal lines: what real images and the tokenizer's reconstructions of real images
    score under the same protocol and n (the best a generator can do through this tokenizer)."""
    if metric not in ("fd_fashion", "fid_inception"):
        return
    for col, (label, style) in BASELINES.items():
        values = data[col].dropna().unique() if col in data else []
        if len(values) == 1:  # one protocol (n) for every run; else no single line exists
            ax.axhline(
                values[0], color="0.35", ls=style, lw=1.2, label=f"{label} ({values[0]:.1f})"
            )


def plot(metrics, runs, metric, out_dir, title) -> list[str]:
    labels = status_labels(runs, metrics)
    data = metrics.assign(label=metrics["method"].map(labels))
    order = sorted(data["label"].unique())
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6), sharey=True)
    for ax, (x, xlabel) in zip(axes, AXES, strict=True):
        if x == "wall_s":  # wall-clock differs per run: one line per run, no averaging
            sns.lineplot(
                data=data,
                x=x,
                y=metric,
                hue="label",
                hue_order=order,
                marker="o",
                units="run",
                estimator=None,
                lw=1,
                ax=ax,
            )
            xlabel += ", one line per run"
        else:
            sns.lineplot(
                data=data,
                x=x,
                y=metric,
                hue="label",
                hue_order=order,
                marker="o",
                errorbar=("ci", 95),
                n_boot=1000,
                seed=0,
                ax=ax,
            )
        draw_baselines(ax, data, metric)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(LABELS.get(metric, metric))
        if x == "train_flops":
            ax.set_xscale("log")
            log_ticks(ax)
        ax.legend(title=None, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    paths = save_figure(fig, out_dir, "convergence")
    extra = [c for c in ("kid", "precision", "recall") if c in data and data[c].notna().any()]
    if extra:
        fig, axes = plt.subplots(1, len(extra), figsize=(5.3 * len(extra), 4.4), squeeze=False)
        for ax, col in zip(axes[0], extra, strict=True):
            sns.lineplot(
                data=data,
                x="train_flops",
                y=col,
                hue="label",
                hue_order=order,
                marker="o",
                errorbar=("ci", 95),
                n_boot=1000,
                seed=0,
                ax=ax,
            )
            ax.set_xscale("log")
            log_ticks(ax)
            ax.set_xlabel("training FLOPs")
            ax.set_ylabel(LABELS.get(col, col))
            ax.legend(title=None, fontsize=8)
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        paths += save_figure(fig, out_dir, "convergence_metrics")
    return paths


def refresh(sweep_dir: str) -> str | None:
    """Redraw ``<sweep>/analysis/convergence.png`` from the evaluations so far (the trainer
    calls this after each evaluation with ``live_figure=true``). Never raises: a plotting
    problem must not stop a training run."""
    try:
        metrics, runs = load_sweep(sweep_dir, quiet=True)  # a training log is no place for notes
        if metrics.empty:
            return None
        metric = headline_metric(metrics)
        metrics = metrics[metrics[metric].notna()]
        seeds = metrics.groupby("method")["seed"].nunique().to_dict()
        title = (
            f"{os.path.basename(os.path.normpath(sweep_dir))} (so far): {metric} vs compute "
            f"(mean over seeds, 95% CI; seeds per method {seeds})"
        )
        out_dir = os.path.join(sweep_dir, "analysis")
        os.makedirs(out_dir, exist_ok=True)
        paths = plot(metrics, runs, metric, out_dir, title)
        plt.close("all")
        return paths[0]
    except Exception as e:  # noqa: BLE001 (reported, never fatal)
        print(f"live figure not updated: {type(e).__name__}: {e}")
        return None


def live_figure(run_dir: str, row: dict) -> str | None:
    """The runner's ``live_figure_hook``: redraw the figure of the sweep holding ``run_dir``."""
    path = refresh(os.path.dirname(os.path.abspath(run_dir)))
    return f"[figure] {path}" if path else None


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_sweep_arguments(ap)
    ap.add_argument("--metric", default=None, help="fd_fashion | fid_inception (default: auto)")
    ap.add_argument("--targets", default=None, help="comma-separated FD/FID levels to reach")
    args = ap.parse_args(argv)
    sweeps = open_sweeps(args, args.metric, need_rows=False)
    metrics, runs, out_dir = sweeps.metrics, sweeps.runs, sweeps.out_dir
    print(f"sweep {' + '.join(sweeps.dirs)}: {len(runs)} runs")
    print(
        runs[["run", "method", "seed", "status", "evaluations", "total_steps"]].to_string(
            index=False
        )
    )
    # unfinished runs are drawn up to their last evaluation, and named as left out of the
    # final table (runs without rows were named by load_sweep)
    finished, _ = left_out_unfinished(
        metrics, runs, "the final table (drawn up to its last evaluation)"
    )
    if metrics.empty:
        print("no evaluations yet: nothing to plot")
        return
    metric = sweeps.metric
    metrics = metrics[metrics[metric].notna()]
    cols = [c for c in (metric, "kid", "precision", "recall") if c in metrics]
    # with what produced every row (analysis/sweeps.py IDENTITY, the protocol), so that a
    # reader of this file alone (precision_check.py, a paper's table) knows what it compares
    ident = [
        c
        for c in (*IDENTITY, "num_samples", "lr_schedule", "decay_from", "label", "train_identity")
        if c in metrics
    ]
    data = metrics[
        [
            "run",
            "method",
            "seed",
            "step",
            "images_seen",
            "train_flops",
            "wall_s",
            "loss",
            *cols,
            *ident,
        ]
    ]
    atomic_write_text(os.path.join(out_dir, "convergence_data.csv"), data.to_csv(index=False))
    seeds = metrics.groupby("method")["seed"].nunique().to_dict()
    names = " + ".join(os.path.basename(os.path.normpath(d)) for d in sweeps.dirs)
    title = f"{names}: {metric} vs compute (mean over seeds, 95% CI; seeds per method {seeds})"
    paths = plot(metrics, runs, metric, out_dir, title)
    final = final_table(finished[finished[metric].notna()], cols)  # only complete runs
    final.to_csv(os.path.join(out_dir, "final_metrics.csv"))
    table = final.to_string(float_format="%.4g")
    print(f"\nfinal metrics of finished runs (mean and std over seeds):\n{table}")
    if args.targets:
        targets = [float(t) for t in args.targets.split(",")]
    else:  # default targets: quantiles of the final values, so the table is never empty
        finals = metrics.sort_values("step").groupby(["method", "seed"]).tail(1)[metric]
        targets = sorted(
            {round(float(q), 1) for q in finals.quantile([0.9, 0.5]).values}, reverse=True
        )
    tables = []
    for t in targets:
        tab = compute_to_reach(metrics, metric, t).assign(target=t)
        tables.append(tab)
        print(f"\ncompute to reach {metric} ≤ {t:g}:\n{tab.to_string(float_format='%.4g')}")
    pd.concat(tables).to_csv(os.path.join(out_dir, "compute_to_reach.csv"))
    print("\nwrote " + ", ".join(paths))


if __name__ == "__main__":
    main()
