"""The statistics a claim must carry (docs/trust.md; DESIGN "What a benchmark claim must carry").

- "A beats B": Welch's two-sided t-test across training seeds (:func:`welch`), Holm-corrected
  within a table (:func:`holm`).
- "A ≈ B": only after two one-sided tests (TOST) at a margin fixed before the run
  (:func:`tost`): both one-sided Welch tests reject "the difference is at least the margin",
  i.e. the (1 − 2α) interval of the difference lies inside ±margin. Otherwise the pair is
  "not resolved", reported with the smallest difference the design could detect
  (:func:`detectable_difference`).
- "Converged": per run and per mean, on the raw FD and on its excess over the tokenizer's floor
  (:func:`converged`).
- "N× less compute": at levels fixed before the sweep, as multiples of the floor
  (:func:`floor_levels`), never at a level set by one method's plateau.

Every function takes plain arrays (one value per seed) and is checked against closed forms or
an independent computation in tests/analysis/test_claims.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Welch:
    diff: float  # mean(a) − mean(b)
    low: float  # (1 − α) interval of the difference
    high: float
    p: float  # two-sided
    df: float


def _welch_parts(a, b) -> tuple[float, float, float]:
    """(difference of means, its standard error, Welch–Satterthwaite degrees of freedom)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"Welch's test needs ≥ 2 values per group, got {len(a)} and {len(b)}")
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if se else math.inf
    return float(a.mean() - b.mean()), se, df


def welch(a, b, alpha: float = 0.05) -> Welch:
    """Welch's two-sided test of mean(a) = mean(b), with the (1 − α) interval."""
    diff, se, df = _welch_parts(a, b)
    if se == 0:
        return Welch(diff, diff, diff, 0.0 if diff else 1.0, df)
    half = stats.t.ppf(1 - alpha / 2, df) * se
    p = 2 * stats.t.sf(abs(diff) / se, df)
    return Welch(diff, diff - half, diff + half, float(p), df)


def tost(a, b, margin: float, alpha: float = 0.05) -> tuple[bool, float]:
    """(equivalent, p): two one-sided Welch tests of |mean(a) − mean(b)| < ``margin``.
    ``p`` is the larger one-sided p; equivalent when p < α (the (1 − 2α) interval of the
    difference inside ±margin)."""
    if margin <= 0:
        raise ValueError(f"an equivalence margin must be positive, got {margin}")
    diff, se, df = _welch_parts(a, b)
    if se == 0:
        inside = abs(diff) < margin
        return inside, 0.0 if inside else 1.0
    p_low = stats.t.sf((diff + margin) / se, df)  # H0: diff ≤ −margin
    p_high = stats.t.cdf((diff - margin) / se, df)  # H0: diff ≥ +margin
    p = float(max(p_low, p_high))
    return p < alpha, p


def holm(pvalues) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (step-down; monotone; capped at 1), in input order."""
    p = np.asarray(pvalues, dtype=float)
    m = len(p)
    order = np.argsort(p)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def detectable_difference(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true difference a two-sided two-sample t-test with ``n`` seeds per group
    and common standard deviation ``sd`` detects with probability ``power``:
    (t_{1−α/2} + t_{power}) · sd · √(2/n), df = 2n − 2."""
    if n < 2:
        raise ValueError(f"needs ≥ 2 seeds per group, got {n}")
    df = 2 * n - 2
    return float((stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * sd * math.sqrt(2 / n))


def verdict(a, b, margin: float, alpha: float = 0.05, p_adjusted: float | None = None) -> str:
    """One word for a pair: "<" or ">" (mean(a) below / above mean(b), two-sided, at the
    Holm-adjusted p when given), "≈" (TOST at ±margin), or "not resolved"."""
    test = welch(a, b, alpha)
    p = test.p if p_adjusted is None else p_adjusted
    if p < alpha:
        return "<" if test.diff < 0 else ">"
    return "≈" if tost(a, b, margin, alpha)[0] else "not resolved"


def last_doubling_gain(fd_half, fd_full, floor: float = 0.0) -> np.ndarray:
    """1 − (FD(C) − floor) / (FD(C/2) − floor): the share of the (excess) FD the last doubling
    of compute removed, per run."""
    half, full = np.asarray(fd_half, dtype=float), np.asarray(fd_full, dtype=float)
    return 1 - (full - floor) / (half - floor)


def converged(fd_half, fd_full, floor: float, threshold: float = 0.10) -> dict:
    """ "Converged" per run and per mean, raw and on the excess over ``floor``: every run's and
    the mean's last-doubling gain below ``threshold`` both ways. Returns the gains and the
    verdict (``converged``: bool)."""
    half, full = np.asarray(fd_half, dtype=float), np.asarray(fd_full, dtype=float)
    out = {
        "run_gain": last_doubling_gain(half, full),
        "run_gain_excess": last_doubling_gain(half, full, floor),
        "mean_gain": float(last_doubling_gain(half.mean(), full.mean())),
        "mean_gain_excess": float(last_doubling_gain(half.mean(), full.mean(), floor)),
    }
    gains = [*out["run_gain"], *out["run_gain_excess"], out["mean_gain"], out["mean_gain_excess"]]
    out["converged"] = bool(max(gains) < threshold)
    return out


def floor_levels(floor: float, multiples=(1.5, 2.0, 3.0)) -> list[float]:
    """Compute-to-reach levels fixed before a sweep: multiples of the tokenizer's floor."""
    if floor <= 0:
        raise ValueError(f"the floor must be positive, got {floor}")
    return [floor * m for m in multiples]
