"""analysis/axis_table.py: the best value of one setting per objective, and whether it is
interior, on hand-made points and on the committed token-axis runs."""

import pandas as pd
import pytest

from analysis import axis_table as axis

TOKEN_AXIS = "analysis/results/fashion_frontier/token_axis"


def points(rows):
    return pd.DataFrame(rows, columns=["label", "value", "fd"])


def test_the_best_value_is_interior_only_inside_the_grid():
    table = axis.axis_table(
        points(
            [
                ("purr", 3e-3, 70.0),
                ("purr", 1e-3, 60.0),
                ("purr", 3e-4, 65.0),
                ("dfm", 3e-4, 80.0),  # best at the low end
                ("dfm", 1e-3, 85.0),
                ("dfm", 3e-3, 90.0),
            ]
        )
    )
    best = table[table["best"]].set_index("method")
    assert best.loc["purr", "value"] == 1e-3 and not best.loc["purr", "at_edge"]
    assert best.loc["dfm", "value"] == 3e-4 and best.loc["dfm", "at_edge"]
    purr = table[table["method"] == "purr"].set_index("value")
    assert purr.loc[3e-3, "fd_over_best"] == pytest.approx(70 / 60)
    lines = axis.verdicts(table, "optim.lr")
    assert any("dfm" in s and "AT AN END" in s for s in lines)
    assert any("purr" in s and "interior" in s for s in lines)


def test_two_values_are_not_a_grid():
    table = axis.axis_table(points([("cfm", 0.1, 90.0), ("cfm", 1.0, 80.0)]))
    assert table["at_edge"].any()
    assert "not a grid yet" in axis.verdicts(table, "data.fraction")[0]


def test_other_differences_names_every_other_key():
    configs = [
        {"optim.lr": 1e-3, "backbone.preset": "DiT-Mini/2", "seed_free": 1},
        {"optim.lr": 3e-3, "backbone.preset": "DiT-Micro/2", "seed_free": 1},
    ]
    assert axis.other_differences(configs, "optim.lr") == ["backbone.preset"]
    assert axis.other_differences(configs[:1] * 2, "optim.lr") == []


def test_wsd_runs_of_different_total_budgets_compare_at_one_budget():
    """Read at one budget, a wsd run's row is the end of a run annealed to it, so the total
    budget may differ; under a constant rate it may not (the row is mid-run there), and with no
    --budget the rows are the runs' final ones, at different budgets."""
    wsd = [
        {"optim.lr": 1e-3, "budget.train_flops": 1.6e14, "optim.schedule": "wsd"},
        {"optim.lr": 3e-3, "budget.train_flops": 8e13, "optim.schedule": "wsd"},
    ]
    assert axis.other_differences(wsd, "optim.lr", annealed_at_budget=True) == []
    assert axis.other_differences(wsd, "optim.lr") == ["budget.train_flops"]
    constant = [{**c, "optim.schedule": "constant"} for c in wsd]
    assert axis.other_differences(constant, "optim.lr", annealed_at_budget=True) == [
        "budget.train_flops"
    ]


def test_on_the_committed_token_axis(tmp_path, capsys):
    """Those runs differ in size, so a learning-rate table of them is refused (one line, exit
    2); by size, purr's sizes at 1.6e14 are read, Mini/2 the best."""
    with pytest.raises(SystemExit) as refused:
        axis.main([TOKEN_AXIS, "--key", "optim.lr", "--out", str(tmp_path)])
    assert refused.value.code == 2
    assert "differ in backbone.preset" in capsys.readouterr().err
    axis.main(
        [TOKEN_AXIS, "--key", "backbone.preset", "--budget", "1.6e14", "--out", str(tmp_path)]
    )
    table = pd.read_csv(tmp_path / "axis_backbone_preset.csv")
    purr = table[table["method"] == "purr"].set_index("value")
    assert {"DiT-Mini/2", "DiT-Micro/2"} <= set(purr.index)
    # one size of the scan: a table of one value per objective (not yet a grid)
    axis.main(
        [TOKEN_AXIS, "--key", "optim.lr", "--budget", "8e13", "--out", str(tmp_path)]
        + ["--where", "backbone.preset=DiT-Micro/2"]
    )
    micro = pd.read_csv(tmp_path / "axis_optim_lr.csv").set_index("method")
    assert set(micro.index) == {"cfm", "dfm", "purr"} and (micro["value"] == 1e-3).all()
    assert micro.loc["purr", "fd"] == pytest.approx(66.2, abs=0.05)
    with pytest.raises(SystemExit):
        axis.main(
            [TOKEN_AXIS, "--key", "optim.lr", "--where", "optim.lr=5e-3", "--out", str(tmp_path)]
        )
    assert "with optim.lr=5e-3 was evaluated" in capsys.readouterr().err
    assert bool(purr.loc["DiT-Mini/2", "best"]) and purr.loc["DiT-Mini/2", "fd"] == pytest.approx(
        60.21, abs=0.01
    )
