"""The fitted law recovers known parameters, predicts a held-out budget, finds crossings."""

import numpy as np
import pandas as pd
import pytest

from analysis.scaling_fit import crossing, crossings, fit_all, fit_law, law

BUDGETS = 1.25e12 * 2.0 ** np.arange(8)


def test_noiseless_curves_are_recovered_exactly():
    for e, a, alpha in [(50.0, 80.0, 0.5), (43.8, 150.0, 0.8), (10.0, 30.0, 0.25)]:
        got = fit_law(BUDGETS, law(BUDGETS, e, a, alpha), floor=0.0)
        assert got == pytest.approx((e, a, alpha), rel=1e-4)


def test_the_floor_bounds_E_and_a_curve_below_it_is_refused():
    fd = law(BUDGETS, 30.0, 80.0, 0.5)
    e, _, _ = fit_law(BUDGETS, fd, floor=40.0)  # the true E is below the floor: E sits on it
    assert e == pytest.approx(40.0, abs=1e-6)
    with pytest.raises(ValueError, match="not above the floor"):
        fit_law(BUDGETS, fd, floor=500.0)


def test_noisy_fit_has_intervals_that_cover_the_truth_and_a_small_heldout_error():
    rng = np.random.default_rng(1)
    truth = {"a": (50.0, 80.0, 0.5), "b": (70.0, 20.0, 0.9)}
    rows = [
        {"method": m, "budget": c, "fd": law(c, *p) + rng.normal(0, 0.5)}
        for m, p in truth.items()
        for c in BUDGETS
    ]
    fits, crossings, _ = fit_all(pd.DataFrame(rows), floor=0.0, noise=0.5, draws=80)
    for _, r in fits.iterrows():
        e, _, alpha = truth[r["method"]]
        assert r["points_fitted"] == 7 and r["heldout_budget"] == BUDGETS[-1]
        assert r["E_lo"] <= e <= r["E_hi"] and r["alpha_lo"] <= alpha <= r["alpha_hi"]
        assert abs(r["heldout_error"]) < 0.03
    # the true curves cross once, where 50 + 80 x^-0.5 = 70 + 20 x^-0.9 (x = C/1e13): b leads
    # below, a above; found by a dense scan independent of the code under test
    x = np.geomspace(0.1, 1000, 200001)
    diff = 50 + 80 * x**-0.5 - 70 - 20 * x**-0.9
    assert diff[0] > 0 > diff[-1] and np.count_nonzero(np.diff(np.sign(diff))) == 1
    true_cross = 1e13 * x[np.argmax(diff < 0)]
    (row,) = crossings.itertuples()
    assert row.last_cross_flops == pytest.approx(true_cross, rel=0.5)
    assert row.last_cross_lo <= true_cross <= row.last_cross_hi
    assert row.lower_at_range_end == "a"  # E 50 < 70
    assert crossing((50.0, 80.0, 0.5), (70.0, 20.0, 0.9), 1e12, 1e16) == pytest.approx(
        true_cross, rel=1e-3
    )


def test_parallel_curves_never_cross_and_two_crossings_are_both_found():
    assert crossing((50.0, 80.0, 0.5), (60.0, 80.0, 0.5), 1e12, 1e16) is None
    # 50 + 80 x^-0.5 and 70 + 40 x^-0.9 (x = C/1e13) cross twice: near x = 0.25 and x = 10
    both = crossings((50.0, 80.0, 0.5), (70.0, 40.0, 0.9), 1e11, 1e16)
    assert len(both) == 2 and both[0] < 1e13 < both[1]
    for c in both:
        x = c / 1e13
        assert 50 + 80 * x**-0.5 == pytest.approx(70 + 40 * x**-0.9, rel=1e-6)
