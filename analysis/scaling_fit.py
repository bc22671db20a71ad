"""A fitted law per objective on its compute frontier, checked on a held-out budget.

    python analysis/scaling_fit.py analysis/results/fashion_frontier/compute_frontier.csv
    python analysis/scaling_fit.py <compute_frontier.csv> --floor 43.8 --noise 2.5 --out figs/

Each objective's lower envelope (``best_fd`` per budget in ``compute_frontier.csv``, written
by ``analysis/compute_frontier.py``) is fitted with

    FD(C) = E + A · (C / C0)^(−α)        (C0 = 1e13 FLOPs, so A is the excess at 1e13)

by least squares in log FD (relative errors, so the early, large-FD points do not dominate),
with E in [floor, min FD) when ``--floor`` (the tokenizer's
reconstruction FD: no generator seen through the tokenizer scores below it) and E ≥ 0
otherwise. The largest budget is left out of the fit, and the law's prediction there is
compared with the measurement (``heldout_error``, relative). Intervals are a parametric
bootstrap: every point redrawn with the evaluation's measured noise (``--noise``, FD standard
deviation; 2.1–2.8 at 1000 samples, docs/converged.md) and refitted, 95% percentile bands.
For each pair of objectives, every compute at which their fitted laws cross inside
``--cross-range`` (default: the smallest budget measured to 100× the largest); the last one,
which decides the order at large compute, with its bootstrap interval and the share of draws
that cross at all; and which objective the laws put lower at the end of the range.

Writes ``scaling_fit.csv`` (one row per objective), ``scaling_crossings.csv`` and
``scaling_fit.{png,pdf}``: each envelope's points, the held-out one hollow, and its fitted
law with the bootstrap's 95% band, drawn to 4× the largest budget.
"""

from __future__ import annotations

import argparse
import itertools
import os

import numpy as np
import pandas as pd
from scipy.optimize import brentq, curve_fit

from shared.io import atomic_write_text

C0 = 1e13


def law(c, e, a, alpha):
    return e + a * (np.asarray(c, dtype=float) / C0) ** (-alpha)


def fit_law(c, fd, floor: float | None = None) -> tuple[float, float, float]:
    """(E, A, α) of ``law`` fitted to points (c, fd) by least squares in log FD; E bounded
    below by ``floor`` (or 0) and above by just under the smallest FD."""
    c, fd = np.asarray(c, dtype=float), np.asarray(fd, dtype=float)
    if len(c) < 3:
        raise ValueError(f"a 3-parameter law needs at least 3 points, got {len(c)}")
    low = 0.0 if floor is None else float(floor)
    high = float(fd.min()) * (1 - 1e-9)
    if high <= low:
        raise ValueError(f"the smallest FD {fd.min():.4g} is not above the floor {low:.4g}")
    best = None
    for e0 in np.linspace(low, high, 7)[:-1]:  # E is the hard parameter: start from several
        excess = np.clip(fd - e0, 1e-9, None)
        slope = -np.polyfit(np.log(c / C0), np.log(excess), 1)[0]
        a0 = float(np.exp(np.mean(np.log(excess) + slope * np.log(c / C0))))
        try:
            p, _ = curve_fit(
                lambda x, e, a, alpha: np.log(law(x, e, a, alpha)),
                c,
                np.log(fd),
                p0=[e0, a0, max(slope, 1e-3)],
                bounds=([low, 0.0, 0.0], [high, np.inf, 5.0]),
                maxfev=20000,
            )
        except RuntimeError:  # no convergence from this start
            continue
        sse = float(np.sum((np.log(law(c, *p)) - np.log(fd)) ** 2))
        if best is None or sse < best[0]:
            best = (sse, p)
    if best is None:
        raise ValueError("the law could not be fitted from any starting point")
    e, a, alpha = best[1]
    return float(e), float(a), float(alpha)


def crossings(p1, p2, lo: float, hi: float) -> list[float]:
    """Every compute in [lo, hi] where two fitted laws cross, in increasing order."""
    grid = np.geomspace(lo, hi, 400)
    diff = law(grid, *p1) - law(grid, *p2)
    sign = np.sign(diff)
    out = []
    for i in np.nonzero(sign[:-1] * sign[1:] < 0)[0]:
        f = lambda logc: float(law(np.exp(logc), *p1) - law(np.exp(logc), *p2))  # noqa: E731
        out.append(float(np.exp(brentq(f, np.log(grid[i]), np.log(grid[i + 1])))))
    return out


def crossing(p1, p2, lo: float, hi: float) -> float | None:
    """The first compute in [lo, hi] where two fitted laws cross, or None."""
    found = crossings(p1, p2, lo, hi)
    return found[0] if found else None


def bootstrap(c, fd, floor, noise: float, draws: int, seed: int) -> np.ndarray:
    """(draws, 3) refits with every point redrawn as fd + N(0, noise²); failed fits dropped."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(draws):
        redrawn = np.asarray(fd, dtype=float) + rng.normal(0.0, noise, len(fd))
        try:
            out.append(fit_law(c, redrawn, floor))
        except ValueError:
            continue
    return np.array(out)


def band(values) -> tuple[float, float]:
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def plot(envelope: pd.DataFrame, fits: pd.DataFrame, draws_of: dict, out_dir: str) -> list:
    """The envelopes, the held-out points and the fitted laws with their bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from analysis.sweeps import save_figure

    fig, ax = plt.subplots(figsize=(7.5, 5))
    lo, hi = envelope["budget"].min(), 4 * envelope["budget"].max()
    grid = np.geomspace(lo, hi, 200)
    for i, fit in enumerate(fits.itertuples()):
        color = f"C{i}"
        pts = envelope[envelope["method"] == fit.method].sort_values("budget")
        ax.plot(pts["budget"][:-1], pts["fd"][:-1], "o", color=color, label=fit.method)
        ax.plot(pts["budget"][-1:], pts["fd"][-1:], "o", mfc="none", color=color, ms=9)
        ax.plot(grid, law(grid, fit.E, fit.A_at_1e13, fit.alpha), "-", color=color, lw=1.2)
        boot = draws_of[fit.method]
        if len(boot):
            curves = law(grid[None, :], boot[:, :1], boot[:, 1:2], boot[:, 2:3])
            low, high = np.percentile(curves, [2.5, 97.5], axis=0)
            ax.fill_between(grid, low, high, color=color, alpha=0.12, lw=0)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training FLOPs (budget)")
    ax.set_ylabel("FD of the best size at that budget (lower envelope)")
    ax.set_title(
        "FD(C) = E + A·C^(−α) per objective, fitted without the largest budget (hollow)",
        fontsize=10,
    )
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    return save_figure(fig, out_dir, "scaling_fit")


def fit_all(
    envelope: pd.DataFrame,
    floor: float | None,
    noise: float,
    draws: int = 300,
    seed: int = 0,
    cross_range: tuple[float, float] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """``envelope``: columns method, budget, fd (one row per method and budget). Returns (the
    per-objective fits, the pairwise crossings, each objective's bootstrap refits)."""
    if cross_range is None:
        cross_range = (float(envelope["budget"].min()), 100 * float(envelope["budget"].max()))
    rows, draws_of, params = [], {}, {}
    for method, grp in envelope.groupby("method", sort=True):
        grp = grp.sort_values("budget")
        if len(grp) < 4:
            raise ValueError(f"{method}: {len(grp)} budgets; a held-out check needs at least 4")
        fit, held = grp.iloc[:-1], grp.iloc[-1]
        p = fit_law(fit["budget"], fit["fd"], floor)
        boot = bootstrap(fit["budget"], fit["fd"], floor, noise, draws, seed)
        predicted = float(law(held["budget"], *p))
        pred_boot = law(held["budget"], boot[:, 0], boot[:, 1], boot[:, 2])
        params[method], draws_of[method] = p, boot
        rows.append(
            {
                "method": method,
                "points_fitted": len(fit),
                "fit_budgets": f"{fit['budget'].min():.3g}–{fit['budget'].max():.3g}",
                "E": p[0],
                "E_lo": band(boot[:, 0])[0],
                "E_hi": band(boot[:, 0])[1],
                "A_at_1e13": p[1],
                "alpha": p[2],
                "alpha_lo": band(boot[:, 2])[0],
                "alpha_hi": band(boot[:, 2])[1],
                "heldout_budget": float(held["budget"]),
                "heldout_fd": float(held["fd"]),
                "heldout_predicted": predicted,
                "heldout_predicted_lo": band(pred_boot)[0],
                "heldout_predicted_hi": band(pred_boot)[1],
                "heldout_error": predicted / float(held["fd"]) - 1,
                "bootstrap_draws": len(boot),
            }
        )
    pairs = []
    for m1, m2 in itertools.combinations(sorted(params), 2):
        found = crossings(params[m1], params[m2], *cross_range)
        n = min(len(draws_of[m1]), len(draws_of[m2]))
        last = [crossings(draws_of[m1][i], draws_of[m2][i], *cross_range) for i in range(n)]
        last = [c[-1] for c in last if c]
        top = cross_range[1]
        lead = m1 if law(top, *params[m1]) < law(top, *params[m2]) else m2
        pairs.append(
            {
                "a": m1,
                "b": m2,
                "crossings": ";".join(f"{c:.3g}" for c in found),
                # the last crossing decides the order at large compute
                "last_cross_flops": found[-1] if found else None,
                "last_cross_lo": band(last)[0] if last else None,
                "last_cross_hi": band(last)[1] if last else None,
                "share_of_draws_crossing": len(last) / n if n else None,
                "lower_at_range_end": lead,
                "range": f"{cross_range[0]:.3g}–{cross_range[1]:.3g}",
            }
        )
    return pd.DataFrame(rows), pd.DataFrame(pairs), draws_of


def envelope_of(frontier_csv: str) -> pd.DataFrame:
    """The lower envelope (method, budget, fd) from compute_frontier.py's CSV."""
    df = pd.read_csv(frontier_csv)
    missing = {"method", "budget_flops", "best_fd"} - set(df.columns)
    if missing:
        raise SystemExit(
            f"error: {frontier_csv} lacks {sorted(missing)}: give the compute_frontier.csv "
            "that analysis/compute_frontier.py writes"
        )
    out = df.rename(columns={"budget_flops": "budget", "best_fd": "fd"})
    return out[["method", "budget", "fd"]].dropna()


def main(argv=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("frontier_csv", help="compute_frontier.csv (analysis/compute_frontier.py)")
    ap.add_argument("--floor", type=float, default=None, help="lower bound on E (FD)")
    ap.add_argument("--noise", type=float, default=2.5, help="FD noise s.d. for the bootstrap")
    ap.add_argument("--draws", type=int, default=300)
    ap.add_argument("--cross-range", type=float, nargs=2, default=None, help="FLOPs, low high")
    ap.add_argument("--out", default=None, help="folder (default: the CSV's)")
    args = ap.parse_args(argv)
    envelope = envelope_of(args.frontier_csv)
    fits, crossings, draws = fit_all(
        envelope,
        args.floor,
        args.noise,
        args.draws,
        cross_range=tuple(args.cross_range) if args.cross_range else None,
    )
    out = args.out or os.path.dirname(os.path.abspath(args.frontier_csv))
    os.makedirs(out, exist_ok=True)
    atomic_write_text(os.path.join(out, "scaling_fit.csv"), fits.to_csv(index=False))
    atomic_write_text(os.path.join(out, "scaling_crossings.csv"), crossings.to_csv(index=False))
    plot(envelope, fits, draws, out)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(fits[["method", "E", "E_lo", "E_hi", "alpha", "heldout_fd", "heldout_predicted",
                    "heldout_error"]].round(3).to_string(index=False))  # fmt: skip
    print(f"wrote {out}/scaling_fit.csv, scaling_crossings.csv")
    return fits, crossings


if __name__ == "__main__":
    main()
