"""Compute to reach an FD level: how many training FLOPs each objective needs to reach a
given FD, and how many times less than a reference objective, with a CI over seeds. This is
the "N× faster convergence" reading of a sweep.

    python analysis/compute_to_reach.py outputs/sweeps/fashion_cpu --reference cfm
    python analysis/compute_to_reach.py analysis/results/fashion_cpu --levels 150,120,100

Per run, the FLOPs at which its FD curve first reaches level L: interpolated between the two
evaluations that bracket L, linearly in (log FLOPs, log FD), which is exact for a power law
FD = a·F^(−b). A run whose first evaluation is already at or below L, or that never reaches
L, has no value there (its value would be a bound, not a crossing), and a method with such a
run gets no ratio at that level. Only finished runs count: an unfinished run has not had its
chance to reach a level, and each one left out is named on stderr.

Per (level, method): the geometric mean over seeds of the FLOPs to reach L. The speed-up
against the reference method is exp(mean log F_ref − mean log F_m): above 1, the method
reaches L with that many times less compute. Its 95% CI is Welch's t interval on the
difference of the mean log FLOPs (seeds of the two methods are independent samples),
exponentiated.

Levels default to five, geometrically spaced between the highest final FD of any run (so
that every run reaches the lowest level) and the lowest first evaluation of any run, capped
at the best method's mean FD at its second evaluation.

Writes compute_to_reach_ratios.csv (one row per level and method) and
compute_to_reach_ratios.{png,pdf}, beside convergence_plot.py's compute_to_reach.csv (the first
evaluation reaching each target, per seed).
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd
from scipy import stats

from analysis.sweeps import add_sweep_arguments, left_out_unfinished, open_sweeps, save_figure
from shared.io import atomic_write_text
from shared.refusal import refuse


def flops_to_reach(flops: np.ndarray, fd: np.ndarray, level: float) -> float:
    """FLOPs at which one curve (evaluations in order of FLOPs) first reaches ``level``;
    NaN if its first evaluation is already at or below it, or if it never gets there."""
    if len(fd) == 0 or fd[0] <= level:
        return math.nan
    below = np.nonzero(fd <= level)[0]
    if len(below) == 0:
        return math.nan
    i = below[0]
    x0, x1 = math.log(flops[i - 1]), math.log(flops[i])
    y0, y1 = math.log(fd[i - 1]), math.log(fd[i])
    return math.exp(x0 + (math.log(level) - y0) * (x1 - x0) / (y1 - y0))


def curves(metrics: pd.DataFrame, metric: str) -> dict[tuple[str, int], tuple]:
    """(method label, seed) → (FLOPs, FD) of that run's evaluations, ordered by FLOPs."""
    out = {}
    rows = metrics[metrics[metric].notna()]
    for (label, seed), grp in rows.groupby(["label", "seed"], sort=True):
        grp = grp.sort_values("train_flops")
        out[(label, int(seed))] = (
            grp["train_flops"].to_numpy(float),
            grp[metric].to_numpy(float),
        )
    return out


def default_levels(runs: dict, n: int = 5) -> list[float]:
    """``n`` levels, geometrically spaced high to low, that every run crosses: from just
    below the lowest first evaluation (capped at the best method's mean FD at its second
    evaluation) down to just above the highest final FD."""
    final = max(fd[-1] for _, fd in runs.values())
    first = min(fd[0] for _, fd in runs.values())
    second = {}
    for (label, _), (_, fd) in runs.items():
        if len(fd) > 1:
            second.setdefault(label, []).append(fd[1])
    low = final * 1.01
    high = min([first * 0.99] + [float(np.mean(v)) for v in second.values()])
    if high <= low:
        return [float(low)]
    return [float(v) for v in np.geomspace(high, low, n)]


def welch_interval(a: np.ndarray, b: np.ndarray, confidence: float = 0.95):
    """(mean(a) − mean(b), low, high): Welch's t interval; the interval is the point itself
    when both samples have no spread, and NaN with fewer than two values in either."""
    diff = float(np.mean(a) - np.mean(b))
    if len(a) < 2 or len(b) < 2:
        return diff, math.nan, math.nan
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return diff, diff, diff
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = stats.t.ppf(0.5 + confidence / 2, df) * se
    return diff, diff - half, diff + half


def table(runs: dict, levels: list[float], reference: str) -> pd.DataFrame:
    methods = sorted({label for label, _ in runs})
    if reference not in methods:
        raise ValueError(f"reference method {reference!r} is not in the sweep ({methods})")
    rows = []
    for level in levels:
        reach = {
            m: np.array(
                [flops_to_reach(f, fd, level) for (lab, _), (f, fd) in runs.items() if lab == m]
            )
            for m in methods
        }
        ref = reach[reference]
        for m in methods:
            values = reach[m]
            row = {
                "level": level,
                "method": m,
                "seeds": len(values),
                "reached": int(np.isfinite(values).sum()),
                "reference": reference,
                "flops": math.nan,
                "speedup": math.nan,
                "ci_low": math.nan,
                "ci_high": math.nan,
            }
            if np.isfinite(values).all():
                row["flops"] = float(np.exp(np.mean(np.log(values))))
                if np.isfinite(ref).all():
                    diff, low, high = welch_interval(np.log(ref), np.log(values))
                    # exp(nan) is nan: a CI needs two seeds of each method
                    row.update(speedup=math.exp(diff), ci_low=math.exp(low), ci_high=math.exp(high))
            row["flops_per_seed"] = " ".join(f"{v:.4g}" for v in values)
            rows.append(row)
    return pd.DataFrame(rows)


def plot(result: pd.DataFrame, metric: str, out_dir: str, note: str) -> list[str]:
    """Left: FLOPs to reach each level per method. Right: each method's speed-up against the
    reference at each level, with its CI over seeds (none drawn with one seed)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    reference = result["reference"].iloc[0]
    drawn = 0
    for m, grp in result.groupby("method"):
        grp = grp[np.isfinite(grp["flops"])]
        if not len(grp):
            continue
        drawn += 1
        (line,) = left.plot(grp["level"], grp["flops"], "o-", label=m)
        if m == reference:
            continue
        ratio = grp[np.isfinite(grp["speedup"])]
        spread = np.isfinite(ratio["ci_low"])
        right.plot(ratio["level"], ratio["speedup"], "o-", color=line.get_color(), label=m)
        right.errorbar(
            ratio["level"][spread],
            ratio["speedup"][spread],
            yerr=[
                (ratio["speedup"] - ratio["ci_low"])[spread],
                (ratio["ci_high"] - ratio["speedup"])[spread],
            ],
            fmt="none",
            color=line.get_color(),
            capsize=3,
        )
    if drawn:
        left.set_xscale("log")
        left.set_yscale("log")
        left.legend(fontsize=8)
        right.set_xscale("log")
        right.set_yscale("log")
        right.legend(fontsize=8)
    else:
        left.text(
            0.5,
            0.5,
            "no method reaches these levels in every seed",
            ha="center",
            transform=left.transAxes,
        )
    right.axhline(1.0, color="grey", lw=1, ls="--")
    levels = sorted(result["level"].unique())
    for ax in (left, right):
        if drawn:  # the levels themselves as ticks, in plain numbers
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            ax.set_xticks(levels, [f"{v:.0f}" for v in levels])
        ax.invert_xaxis()
        ax.set_xlabel(f"{metric} level to reach (lower is better →)")
        ax.grid(True, which="both", alpha=0.3)
    left.set_ylabel("training FLOPs to reach it (geometric mean over seeds)")
    right.set_ylabel(f"× less compute than {reference} (95% CI over seeds)")
    fig.suptitle(f"Compute to reach an FD level\n{note}", fontsize=9)
    fig.tight_layout()
    paths = save_figure(fig, out_dir, "compute_to_reach_ratios")
    plt.close(fig)
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_sweep_arguments(ap)
    ap.add_argument("--reference", default="cfm", help="the method speed-ups are against")
    ap.add_argument("--levels", default=None, help="comma-separated FD levels (default: five)")
    args = ap.parse_args(argv)
    sweeps = open_sweeps(args)
    metric, out_dir = sweeps.metric, sweeps.out_dir
    # an unfinished run's curve stops early: "never reaches the level" would be a guess
    metrics, _ = left_out_unfinished(sweeps.metrics, sweeps.runs, "the compute-to-reach table")
    if metrics.empty:
        refuse(f"no finished runs with evaluations in {' + '.join(sweeps.dirs)}")
    runs = curves(metrics, metric)
    try:
        levels = [float(v) for v in args.levels.split(",")] if args.levels else None
    except ValueError:
        ap.error(f"--levels takes comma-separated numbers, got {args.levels!r}")
    try:
        result = table(runs, levels or default_levels(runs), args.reference)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    seeds = result.groupby("method")["seeds"].max().to_dict()
    note = f"seeds per method {seeds}; speed-up vs {args.reference}, 95% Welch CI over seeds"
    paths = plot(result, metric, out_dir, note)
    atomic_write_text(
        os.path.join(out_dir, "compute_to_reach_ratios.csv"), result.to_csv(index=False)
    )
    for level, grp in result.groupby("level", sort=False):
        parts = []
        for r in grp.itertuples():
            if not math.isfinite(r.flops):
                parts.append(f"{r.method} not reached by {r.seeds - r.reached} of {r.seeds} seeds")
            elif r.method != args.reference and math.isfinite(r.speedup):
                parts.append(
                    f"{r.method} {r.flops:.3g} ({r.speedup:.2f}× [{r.ci_low:.2f}, {r.ci_high:.2f}])"
                )
            else:
                parts.append(f"{r.method} {r.flops:.3g}")
        print(f"{metric} ≤ {level:.1f}: " + "; ".join(parts))
    print(f"wrote {', '.join(paths)}, compute_to_reach_ratios.csv in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
