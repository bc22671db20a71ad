"""analysis/compute_to_reach.py against closed forms: power-law curves, whose crossing of an
FD level is known exactly, and scipy's own Welch interval."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import compute_to_reach as ctr

FLOPS = 1e12 * 2.0 ** np.arange(7)


def power_law(fd0, b, shift=1.0):
    """FD = fd0 · (shift·F / 1e12)^(−b): fd0 at the first evaluation when shift is 1."""
    return fd0 * (shift * FLOPS / 1e12) ** (-b)


def crossing(fd0, b, level, shift=1.0):
    """Where that power law reaches ``level``, in closed form."""
    return 1e12 * (fd0 / level) ** (1 / b) / shift


def test_a_power_law_is_crossed_where_its_closed_form_says():
    fd0, b = 400.0, 0.4
    for level in (450.0, 150.0, 97.3, 40.0):
        got = ctr.flops_to_reach(FLOPS, power_law(fd0, b), level)
        if level in (450.0, 40.0):  # above the first evaluation; below the last
            assert math.isnan(got)
        else:
            assert got == pytest.approx(crossing(fd0, b, level), rel=1e-12)


def test_a_level_reached_before_the_first_or_never_has_no_value():
    fd = np.array([300.0, 200.0, 150.0])
    flops = FLOPS[:3]
    assert math.isnan(ctr.flops_to_reach(flops, fd, 400.0))  # already below at the start
    assert math.isnan(ctr.flops_to_reach(flops, fd, 100.0))  # never reached
    assert ctr.flops_to_reach(flops, fd, 200.0) == pytest.approx(flops[1])
    # not monotone: the first crossing counts, not a later one
    bumpy = np.array([300.0, 180.0, 250.0, 120.0])
    assert ctr.flops_to_reach(FLOPS[:4], bumpy, 200.0) < FLOPS[1]


def test_the_interval_is_scipys_welch_interval():
    rng = np.random.default_rng(0)
    a, b = rng.normal(30, 0.2, 3), rng.normal(29.5, 0.4, 4)
    diff, low, high = ctr.welch_interval(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert diff == pytest.approx(a.mean() - b.mean())
    assert (low, high) == (pytest.approx(ref.low), pytest.approx(ref.high))
    assert all(math.isnan(v) for v in ctr.welch_interval(a[:1], b)[1:])


def test_a_method_shifted_by_c_in_compute_is_c_times_faster():
    """FD_m(F) = FD_ref(c·F) for every seed: the speed-up is c at every level, and with seeds
    that differ its CI contains c."""
    c = 2.5
    runs = {}
    for seed, fd0 in enumerate((400.0, 440.0, 380.0)):
        runs[("cfm", seed)] = (FLOPS, power_law(fd0, 0.4))
        runs[("purr", seed)] = (FLOPS, power_law(fd0, 0.4, shift=c))
    levels = ctr.default_levels(runs)
    assert len(levels) == 5 and levels == sorted(levels, reverse=True)
    result = ctr.table(runs, levels, "cfm")
    assert (result["reached"] == 3).all()  # the default levels are crossed by every run
    purr = result[result["method"] == "purr"]
    assert purr["speedup"].tolist() == pytest.approx([c] * 5, rel=1e-9)
    assert (purr["ci_low"] < c).all() and (purr["ci_high"] > c).all()
    for level, flops in zip(purr["level"], purr["flops"], strict=True):
        exact = [crossing(fd0, 0.4, level, shift=c) for fd0 in (400.0, 440.0, 380.0)]
        assert flops == pytest.approx(np.exp(np.mean(np.log(exact))), rel=1e-9)
    cfm = result[result["method"] == "cfm"]
    assert cfm["speedup"].tolist() == pytest.approx([1.0] * 5)
    # identical seeds: no spread, the interval is the point
    same = {
        (m, s): (FLOPS, power_law(400.0, 0.4, shift=c if m == "purr" else 1.0))
        for m in ("cfm", "purr")
        for s in (0, 1)
    }
    one = ctr.table(same, [150.0], "cfm").set_index("method")
    assert one.loc["purr", "speedup"] == pytest.approx(c, rel=1e-9)
    assert one.loc["purr", "ci_low"] == pytest.approx(c, rel=1e-9)


def test_a_seed_that_never_reaches_the_level_leaves_the_method_without_a_ratio():
    runs = {
        ("cfm", 0): (FLOPS, power_law(400.0, 0.4)),
        ("cfm", 1): (FLOPS, power_law(400.0, 0.4)),
        ("purr", 0): (FLOPS, power_law(400.0, 0.4)),
        ("purr", 1): (FLOPS, power_law(1200.0, 0.4)),
    }
    level = float(power_law(400.0, 0.4)[-2])
    row = ctr.table(runs, [level], "cfm").set_index("method").loc["purr"]
    assert row["reached"] == 1 and math.isnan(row["flops"]) and math.isnan(row["speedup"])
    with pytest.raises(ValueError, match="reference method 'dfm'"):
        ctr.table(runs, [level], "dfm")


def test_the_command_reads_a_sweep_and_writes_its_table(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    for job, (label, a) in enumerate(
        [("cfm", 400.0), ("cfm", 420.0), ("purr", 350.0), ("purr", 360.0)]
    ):
        seed = job % 2
        run = sweep / f"{job}_{label}_seed{seed}"
        run.mkdir(parents=True)
        rows = [
            {
                "method": label,
                "seed": seed,
                "step": i + 1,
                "train_flops": f,
                "fd_fashion": fd,
                "num_samples": 1000,
            }
            for i, (f, fd) in enumerate(zip(FLOPS, power_law(a, 0.4), strict=True))
        ]
        pd.DataFrame(rows).to_csv(run / "metrics.csv", index=False)
        (run / "summary.json").write_text(
            json.dumps(
                {
                    "method": label,
                    "seed": seed,
                    "status": "finished",
                    "train_identity": label,
                    "train_config": {"method.name": label},
                }
            )
        )
    out = tmp_path / "out"
    assert ctr.main([str(sweep), "--levels", "150,120", "--out", str(out)]) == 0
    result = pd.read_csv(out / "compute_to_reach_ratios.csv")
    assert sorted(result["level"].unique()) == [120.0, 150.0]
    purr = result[(result["method"] == "purr") & (result["level"] == 150.0)].iloc[0]
    exact = np.exp(np.mean(np.log([crossing(fd0, 0.4, 150.0) for fd0 in (350.0, 360.0)])))
    assert purr["flops"] == pytest.approx(exact, rel=1e-9)
    assert (out / "compute_to_reach_ratios.png").is_file()
    assert "fd_fashion ≤ 150.0: cfm" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="reference method 'dfm'"):
        ctr.main([str(sweep), "--reference", "dfm", "--out", str(out)])


def test_every_sweep_command_refuses_a_sweep_without_evaluations_and_names_it(tmp_path):
    """analysis/sweeps.open_sweeps starts every sweep-reading command: a sweep whose runs have
    not evaluated yet is refused with its folder named, and --out defaults to its analysis/."""
    from analysis import compute_frontier, ranking_vs_budget, sweeps

    sweep = tmp_path / "sweep"
    run = sweep / "0_cfm_seed0"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"method": "cfm", "seed": 0, "status": "running"}))
    for command in (ctr.main, compute_frontier.main):
        with pytest.raises(SystemExit, match=f"no evaluation rows yet in {sweep}"):
            command([str(sweep)])
    with pytest.raises(SystemExit, match="no finished runs"):
        ranking_vs_budget.main([str(sweep)])
    args = type("Args", (), {"sweeps": [str(sweep)], "out": None})()
    opened = sweeps.open_sweeps(args, need_rows=False)
    assert opened.out_dir == str(sweep / "analysis") and (sweep / "analysis").is_dir()
    assert opened.metric is None and len(opened.runs) == 1
