"""Each objective's compute frontier: FD against training FLOPs for every model size, and the
lower envelope over sizes (the best model for each budget, as in scaling-law studies).

    python analysis/compute_frontier.py outputs/sweeps/frontier_wsd
    python analysis/compute_frontier.py analysis/results/fashion_frontier --out figs/

One run per (method, size), each evaluated at log-spaced fractions of one FLOP budget; under
``optim.schedule=wsd`` every evaluation is of a decay branch, so each point is the annealed
FD of a run with exactly that budget. Budgets are matched by their nominal value (the run's
FLOP budget × 2^-k; the step count rounds each size's actual FLOPs a little differently).

Writes compute_frontier.{png,pdf}; compute_frontier.csv: per method and budget, the FD of
every size, the best size and its FD; frontier_curves.csv: every (method, size, budget) point
with the FD gain of its last doubling (1 − FD(B)/FD(B/2)). Prints, at every budget, the
ranking of the methods at each size and whether it depends on the size.
"""

from __future__ import annotations

import argparse
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis.sweeps import add_sweep_arguments, open_sweeps, save_figure
from shared.io import atomic_write_text


def frontier_points(metrics: pd.DataFrame, runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per (method label, size, nominal budget): FD, actual FLOPs, parameters, and the
    gain of the last doubling. A (method, size) with several seeds is refused: this is a
    one-seed scan, and a mean would hide that."""
    by_run = runs.set_index("run")
    df = metrics.copy()
    df["size"] = df["run"].map(by_run["backbone"])
    df["params"] = df["run"].map(by_run["params"])
    budget = df["run"].map(by_run["budget_train_flops"])
    if budget.isna().any():
        bad = sorted(df.loc[budget.isna(), "run"].unique())
        raise ValueError(f"runs without a FLOP budget (budget.images runs?): {', '.join(bad)}")
    ratio = np.log2(df["train_flops"].astype(float) / budget.astype(float))
    df["budget"] = budget.astype(float) * np.exp2(np.round(ratio))
    seeds = df.groupby(["label", "size"])["seed"].nunique()
    if (seeds > 1).any():
        many = ", ".join(f"{m} {s}" for (m, s), n in seeds.items() if n > 1)
        raise ValueError(f"more than one seed for {many}: the frontier is a one-seed scan")
    df = df.rename(columns={metric: "fd"})
    out = df[["label", "size", "params", "budget", "train_flops", "fd", "run", "lr_schedule"]]
    out = out.sort_values(["label", "params", "budget"]).reset_index(drop=True)
    prev = out.groupby(["label", "size"])["fd"].shift(1)
    prev_budget = out.groupby(["label", "size"])["budget"].shift(1)
    doubled = np.isclose(out["budget"], 2 * prev_budget)
    out["gain_last_doubling"] = np.where(doubled, 1 - out["fd"] / prev, np.nan)
    return out


def envelope(points: pd.DataFrame) -> pd.DataFrame:
    """Per method and budget: the FD of every size, the best size and its FD."""
    rows = []
    for (label, budget), grp in points.groupby(["label", "budget"]):
        best = grp.loc[grp["fd"].idxmin()]
        row = {
            "method": label,
            "budget_flops": budget,
            "best_size": best["size"],
            "best_fd": best["fd"],
            "sizes_measured": len(grp),
        }
        row.update({f"fd {s}": fd for s, fd in zip(grp["size"], grp["fd"], strict=True)})
        rows.append(row)
    return pd.DataFrame(rows)


def rankings(points: pd.DataFrame) -> list[str]:
    """At every budget, the methods ranked by FD at each size, and whether the ranking
    depends on the size (sizes where a method is missing are left out)."""
    lines = []
    for budget, grp in points.groupby("budget"):
        orders = {}
        for size, g in grp.groupby("size"):
            orders[size] = tuple(g.sort_values("fd")["label"])
        full = max(len(o) for o in orders.values())
        complete = {s: o for s, o in orders.items() if len(o) == full}
        if len(complete) < 2:
            verdict = f"only {', '.join(complete)} has every method: nothing to compare"
        elif len(set(complete.values())) == 1:
            verdict = "the same at every size"
        else:
            verdict = "DEPENDS on the size"
        lines.append(f"budget {budget:.3g} FLOPs: ranking {verdict}")
        for size, order in complete.items():
            lines.append(f"  {size:12s} " + " < ".join(order))
    return lines


def plot(
    points: pd.DataFrame,
    env: pd.DataFrame,
    metric: str,
    out_dir: str,
    note: str,
    ceiling: float | None = None,
):
    """One panel per method (its sizes and their envelope), and one of every envelope."""
    from matplotlib.ticker import NullFormatter

    labels = sorted(points["label"].unique())
    sizes = points.drop_duplicates("size").sort_values("params")["size"].tolist()
    panels = len(labels) + 1
    ncol = min(3, panels)
    nrow = -(-panels // ncol)
    fig, axes = plt.subplots(
        nrow, ncol, figsize=(4.2 * ncol, 3.4 * nrow), sharey=True, squeeze=False
    )
    axes = axes.ravel()
    for ax in axes[panels:]:
        ax.set_visible(False)
    axes = axes[:panels]
    shades = plt.cm.viridis(np.linspace(0.15, 0.85, len(sizes)))
    colors = dict(zip(labels, plt.cm.tab10(np.arange(len(labels))), strict=True))
    for ax, label in zip(axes, labels, strict=False):
        for size, shade in zip(sizes, shades, strict=True):
            curve = points[(points["label"] == label) & (points["size"] == size)]
            if len(curve):
                params = curve["params"].iloc[0]
                ax.plot(
                    curve["budget"],
                    curve["fd"],
                    "o-",
                    ms=3,
                    color=shade,
                    label=f"{size} ({params / 1e6:.2g}M)",
                )
        e = env[env["method"] == label]
        ax.plot(e["budget_flops"], e["best_fd"], "k--", lw=1.2, label="envelope")
        ax.set_title(label)
        ax.set_xlabel("training FLOPs")
        ax.legend(fontsize=6)
    last = axes[-1]
    for label in labels:
        e = env[env["method"] == label]
        last.plot(e["budget_flops"], e["best_fd"], "o-", ms=3, color=colors[label], label=label)
    last.set_title("envelopes")
    last.set_xlabel("training FLOPs")
    last.legend(fontsize=7)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
        if ceiling is not None:
            ax.axhline(ceiling, color="grey", ls=":", lw=1)
    if ceiling is not None:
        last.text(
            last.get_xlim()[0],
            ceiling,
            " tokenizer ceiling (its reconstructions)",
            va="bottom",
            fontsize=7,
            color="grey",
        )
    for row in range(nrow):
        axes[row * ncol].set_ylabel(metric.replace("_", " ") + " (lower is better)")
    fig.suptitle(f"Compute frontier per objective: {note}", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out_dir, "compute_frontier")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_sweep_arguments(ap)
    sweeps = open_sweeps(ap.parse_args(argv))
    metrics, metric, out_dir = sweeps.metrics, sweeps.metric, sweeps.out_dir
    points = frontier_points(metrics, sweeps.runs, metric)
    env = envelope(points)
    schedules = ", ".join(sorted(points["lr_schedule"].fillna("constant").astype(str).unique()))
    seeds = ", ".join(str(s) for s in sorted(metrics["seed"].unique()))
    n = ", ".join(str(v) for v in sorted(metrics["num_samples"].unique()))
    note = (
        f"one seed per (method, size) (seed {seeds}); lr schedule {schedules}; "
        f"{metric} at n={n} samples"
    )
    ceiling = None
    if "fd_recon" in metrics and metrics["fd_recon"].notna().any():
        ceiling = float(metrics["fd_recon"].median())
    paths = plot(points, env, metric, out_dir, note, ceiling)
    atomic_write_text(os.path.join(out_dir, "frontier_curves.csv"), points.to_csv(index=False))
    atomic_write_text(os.path.join(out_dir, "compute_frontier.csv"), env.to_csv(index=False))
    for line in rankings(points):
        print(line)
    print(f"wrote {', '.join(paths)}, compute_frontier.csv, frontier_curves.csv in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
