"""How the ranking of the methods changes with the training budget, FLOP- and iteration-matched.

    python analysis/ranking_vs_budget.py                         # the latest sweep
    python analysis/ranking_vs_budget.py outputs/sweeps/X outputs/sweeps/Y --out figs/

Every run of a sweep is evaluated at fractions of its FLOP budget: the FLOP-matched view
compares methods at the same fraction (``budget_fraction`` to 0.01) of the same budget, never
by the index of an evaluation. Runs trained on different budgets are refused, unless
``--by-flops`` (each run's curve interpolated, linearly in log FLOPs, at the evaluation FLOPs
of the method that stops earliest). The paper compares methods at equal iterations instead;
since the categorical heads cost more FLOPs per step, their k-th evaluation comes a few steps
earlier, so the iteration-matched view interpolates each run's curve (linearly in log steps) to the
steps of the method with the fewest and compares there.

For each view and point: mean over seeds, the 95% confidence interval of the mean (Student
t), and the ranking; where two methods' means swap order between consecutive points the
crossing is located by interpolation (in log FLOPs or log steps); the figure marks those
with ``--reference`` (purr by default; ``all`` marks every pair). Writes
ranking_vs_budget.{png,pdf}, ranking_vs_budget.csv (per method and point) and
crossings.csv, and prints the rankings with the adjacent pairs that a Welch t-test cannot
separate (p ≥ 0.05) joined by "≈".
"""

from __future__ import annotations

import argparse
import itertools
import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis.sweeps import add_sweep_arguments, left_out_unfinished, open_sweeps, save_figure

# two-sided 97.5% quantiles of Student's t, df = 1..30 (beyond: the normal 1.96)
T975 = [
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
]


def t975(df: int) -> float:
    return T975[df - 1] if 1 <= df <= len(T975) else 1.96


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| ≥ t) for Student's t with df degrees of freedom: 1 − 2∫₀ᵗ density (Simpson)."""
    logc = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    x = np.linspace(0.0, abs(t), 20_001)
    dens = np.exp(logc - (df + 1) / 2 * np.log1p(x**2 / df))
    h = x[1] - x[0]
    inner = h / 3 * (dens[0] + dens[-1] + 4 * dens[1:-1:2].sum() + 2 * dens[2:-1:2].sum())
    return float(min(1.0, max(0.0, 1 - 2 * inner)))


def welch_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided p of Welch's unequal-variance t-test."""
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    if va + vb == 0:
        return 0.0 if a.mean() != b.mean() else 1.0
    t = abs(a.mean() - b.mean()) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return t_two_sided_p(t, df)


def per_point(metrics: pd.DataFrame, metric: str, runs: pd.DataFrame | None = None):
    """One row per (method, seed, budget point k) with FLOPs, steps and the metric, where k
    is the fraction of the run's budget at that evaluation (to 0.01): methods are compared at
    the same fraction of the same budget, never by the index of an evaluation."""
    df = metrics.sort_values("step").copy()
    frac = df["budget_fraction"] if "budget_fraction" in df else pd.Series(np.nan, df.index)
    if frac.isna().any():  # rows from before it was recorded: step / the run's total steps
        if runs is None or "total_steps" not in runs:
            raise ValueError("rows without budget_fraction, and no total_steps to derive it")
        total = df["run"].map(runs.set_index("run")["total_steps"]).astype(float)
        frac = frac.fillna(df["step"] / total)
        if frac.isna().any():
            lost = sorted(df.loc[frac.isna(), "run"].unique())
            raise SystemExit(f"error: no budget_fraction nor total_steps for {', '.join(lost)}")
    df["k"] = frac.astype(float).round(2)
    return df[["method", "seed", "k", "train_flops", "step", metric]]


def interpolated(points: pd.DataFrame, metric: str, x: str = "step") -> pd.DataFrame:
    """Each run's metric interpolated (linear in log x) at the x of the method whose runs stop
    earliest (steps: iteration-matched; FLOPs: FLOP-matched across unequal budgets); points
    outside a run's range are dropped."""
    last = points.groupby("method")[x].max()
    ref = last.idxmin()
    grid = sorted(points.loc[points["method"] == ref, x].unique())
    rows = []
    for (method, seed), g in points.groupby(["method", "seed"]):
        g = g.sort_values(x)
        xs, ys = np.log(g[x].to_numpy(float)), g[metric].to_numpy(float)
        for k, s in enumerate(grid):
            if xs[0] <= math.log(s) <= xs[-1]:
                rows.append(
                    {
                        "method": method,
                        "seed": seed,
                        "k": k,
                        x: s,
                        metric: float(np.interp(math.log(s), xs, ys)),
                    }
                )
    return pd.DataFrame(rows)


def iteration_matched(points: pd.DataFrame, metric: str) -> pd.DataFrame:
    return interpolated(points, metric, "step")


def check_budgets(runs: pd.DataFrame) -> None:
    """Refuse runs trained on different budgets: the same fraction of two budgets is not the
    same compute (``--by-flops`` compares them at equal FLOPs instead)."""
    cols = [c for c in ("budget_train_flops", "budget_images") if c in runs]
    if not cols:
        return
    key = runs[cols].astype("string").fillna("none").agg(" / ".join, axis=1)
    if key.nunique() > 1:
        lines = "\n  ".join(
            f"{' / '.join(cols)} = {k}: {', '.join(sorted(g['run']))}"
            for k, g in runs.assign(_b=key).groupby("_b")
        )
        raise SystemExit(
            f"error: these runs trained on different budgets, so their evaluations at equal "
            f"fractions of the budget are at different compute:\n  {lines}\nCompare them "
            "with --by-flops (interpolated at equal training FLOPs), or one budget at a time."
        )


def summarise(points: pd.DataFrame, metric: str, x: str) -> pd.DataFrame:
    g = points.groupby(["method", "k"])
    out = g.agg(x=(x, "mean"), mean=(metric, "mean"), std=(metric, "std"), n=(metric, "size"))
    out["ci95"] = [
        t975(n - 1) * s / math.sqrt(n) if n > 1 else np.nan
        for n, s in zip(out["n"], out["std"], strict=True)
    ]
    return out.reset_index()


def crossings(summary: pd.DataFrame) -> list[dict]:
    """Where two methods' mean curves swap order between consecutive shared points."""
    out = []
    table = summary.pivot(index="k", columns="method", values="mean")
    xs = summary.groupby("k")["x"].mean()
    for a, b in itertools.combinations(sorted(table.columns), 2):
        d = (table[a] - table[b]).dropna()
        ks = list(d.index)
        for k0, k1 in itertools.pairwise(ks):
            if np.sign(d[k0]) != np.sign(d[k1]) and d[k0] != 0:
                f = d[k0] / (d[k0] - d[k1])  # linear in log x
                at = math.exp(math.log(xs[k0]) + f * (math.log(xs[k1]) - math.log(xs[k0])))
                better = a if d[k1] < 0 else b
                out.append(
                    {
                        "pair": f"{a} / {b}",
                        "between_k": f"{k0}-{k1}",
                        "at": at,
                        "ahead_after": better,
                    }
                )
    return out


def ranking(points: pd.DataFrame, metric: str, k: int) -> str:
    """'purr < cfm ≈ dfm' at point k: sorted by mean; ≈ where Welch p ≥ 0.05."""
    at = points[points["k"] == k]
    vals = {m: g[metric].to_numpy(float) for m, g in at.groupby("method")}
    order = sorted(vals, key=lambda m: vals[m].mean())
    text = order[0]
    for prev, cur in itertools.pairwise(order):
        p = welch_p(vals[prev], vals[cur])
        text += f" {'≈' if not p < 0.05 else '<'} {cur}"
    return text


def draw(ax, summary, cross, xlabel, metric, title, reference=None):
    for method, g in summary.groupby("method"):
        g = g.sort_values("x")
        line = ax.plot(g["x"], g["mean"], marker="o", label=method)[0]
        ci = g["ci95"].fillna(0)
        ax.fill_between(g["x"], g["mean"] - ci, g["mean"] + ci, color=line.get_color(), alpha=0.18)
    for c in cross:  # the crossings that involve the reference method (all without one)
        if reference and reference not in c["pair"].split(" / "):
            continue
        ax.axvline(c["at"], color="0.3", ls=":", lw=1)
        ax.annotate(
            c["pair"],
            (c["at"], ax.get_ylim()[1]),
            rotation=90,
            fontsize=7,
            va="top",
            ha="right",
            color="0.3",
        )
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_sweep_arguments(ap)
    ap.add_argument("--metric", default=None)
    ap.add_argument(
        "--reference",
        default="purr",
        help="mark only crossings with this method ('all': every pair)",
    )
    ap.add_argument(
        "--by-flops",
        action="store_true",
        help="compare unequal budgets at equal FLOPs (interpolated)",
    )
    args = ap.parse_args(argv)
    sweeps = open_sweeps(args, args.metric, need_rows=False)
    metrics, runs, out_dir = sweeps.metrics, sweeps.runs, sweeps.out_dir
    metrics, runs = left_out_unfinished(metrics, runs, "the ranking")
    if metrics.empty:
        raise SystemExit(f"no finished runs with evaluations in {' + '.join(sweeps.dirs)}")
    if not args.by_flops:
        check_budgets(runs[runs["run"].isin(metrics["run"])])
    metric = sweeps.metric
    flop_pts = per_point(metrics, metric, runs)
    iter_pts = iteration_matched(flop_pts, metric)
    if args.by_flops:
        flop_pts = interpolated(flop_pts, metric, "train_flops")
    views = {
        "FLOP-matched": (flop_pts, "train_flops", "training FLOPs"),
        "iteration-matched": (iter_pts, "step", "training steps (interpolated)"),
    }
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)
    tables, all_cross, result = [], [], {}
    for ax, (view, (pts, x, xlabel)) in zip(axes, views.items(), strict=True):
        summ = summarise(pts, metric, x)
        cross = crossings(summ)
        ref = (
            None
            if args.reference == "all" or args.reference not in set(summ["method"])
            else args.reference
        )
        marked = f"; dotted: crossings with {ref}" if ref else "; dotted: crossings"
        draw(ax, summ, cross, xlabel, metric, f"{view}: mean over seeds, 95% CI{marked}", ref)
        tables.append(summ.assign(view=view))
        all_cross += [dict(c, view=view) for c in cross]
        ranks = [
            (k, float(summ.loc[summ["k"] == k, "x"].mean()), ranking(pts, metric, k))
            for k in sorted(summ["k"].unique())
        ]
        result[view] = {"ranking": ranks, "crossings": cross}
        print(f"\n{view} ranking by mean {metric} (≈: Welch p ≥ 0.05 between neighbours)")
        fraction = view == "FLOP-matched" and not args.by_flops
        for k, xv, text in ranks:
            where = f"{k:.0%} of the budget" if fraction else f"point {k}"
            print(f"  {where}: {x} {xv:.3g}: {text}")
        for c in cross:
            print(f"  crossing {c['pair']} at {x} ≈ {c['at']:.3g}: {c['ahead_after']} ahead after")
    fig.tight_layout()
    paths = save_figure(fig, out_dir, "ranking_vs_budget")
    pd.concat(tables).to_csv(os.path.join(out_dir, "ranking_vs_budget.csv"), index=False)
    pd.DataFrame(all_cross, columns=["view", "pair", "between_k", "at", "ahead_after"]).to_csv(
        os.path.join(out_dir, "crossings.csv"), index=False
    )
    print("\nwrote " + ", ".join(paths))
    return result


if __name__ == "__main__":
    main()
