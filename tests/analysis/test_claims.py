"""The claim statistics against independent computations (scipy's own tests, closed forms)."""

import numpy as np
import pytest
from scipy import stats

from analysis.claims import (
    converged,
    detectable_difference,
    floor_levels,
    holm,
    tost,
    verdict,
    welch,
)

RNG = np.random.default_rng(0)
PAIRS = [(RNG.normal(80, 2, n), RNG.normal(80 + d, 3, m)) for n, m, d in
         [(3, 3, 0.0), (3, 3, 5.0), (5, 4, 1.0), (3, 5, -8.0), (6, 6, 0.5)]]  # fmt: skip


@pytest.mark.parametrize("a, b", PAIRS)
def test_welch_matches_scipy(a, b):
    ours = welch(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert ours.p == pytest.approx(ref.pvalue, rel=1e-10)
    low, high = ref.confidence_interval(0.95)
    assert (ours.low, ours.high) == pytest.approx((low, high), rel=1e-10)


@pytest.mark.parametrize("a, b", PAIRS)
@pytest.mark.parametrize("margin", [1.0, 3.0, 10.0])
def test_tost_is_two_one_sided_welch_tests_and_the_90_percent_interval(a, b, margin):
    equivalent, p = tost(a, b, margin)
    # H0: diff ≥ +margin, tested on a shifted by the margin; H0: diff ≤ −margin likewise
    p_high = stats.ttest_ind(a - margin, b, equal_var=False, alternative="less").pvalue
    p_low = stats.ttest_ind(a + margin, b, equal_var=False, alternative="greater").pvalue
    assert p == pytest.approx(max(p_low, p_high), rel=1e-10)
    ci = welch(a, b, alpha=0.10)  # the (1 − 2α) interval
    assert equivalent == (-margin < ci.low and ci.high < margin)


def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 → ×4, ×3, ×2, ×1 = 0.02, 0.03, 0.06, 0.04 → monotone
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


@pytest.mark.parametrize("n", [3, 5, 10])
def test_the_detectable_difference_has_the_stated_power(n):
    sd = 2.0
    d = detectable_difference(sd, n)
    df, crit = 2 * n - 2, stats.t.ppf(0.975, 2 * n - 2)
    nc = d / (sd * np.sqrt(2 / n))  # exact power of the equal-variance t-test: noncentral t
    power = stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc)
    assert power == pytest.approx(0.8, abs=0.03)


def test_verdicts():
    close = (np.array([80.0, 80.5, 79.5]), np.array([80.2, 80.7, 79.7]))
    assert verdict(*close, margin=2.0) == "≈"
    assert verdict(*close, margin=0.1) == "not resolved"
    apart = (np.array([70.0, 71.0, 69.0]), np.array([90.0, 91.0, 89.0]))
    assert verdict(*apart, margin=2.0) == "<" and verdict(*apart[::-1], margin=2.0) == ">"
    assert verdict(*apart, margin=2.0, p_adjusted=0.2) == "not resolved"


def test_converged_needs_every_run_and_the_excess_over_the_floor():
    floor = 40.0
    # raw gains 5%, but the excess over the floor falls from 60 to 55: 8.3%, then 12%
    ok = converged([100.0, 100.0], [95.0, 95.0], floor)
    assert ok["converged"] and ok["mean_gain"] == pytest.approx(0.05)
    assert ok["mean_gain_excess"] == pytest.approx(1 - 55 / 60)
    slow = converged([100.0, 60.0], [95.0, 57.0], floor)  # run 2: excess 20 → 17, 15%
    assert not slow["converged"] and slow["run_gain_excess"][1] == pytest.approx(0.15)
    assert floor_levels(43.8) == pytest.approx([65.7, 87.6, 131.4])
