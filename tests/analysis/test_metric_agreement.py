"""analysis/metric_agreement.py: Kendall's τ between fd_fashion and Inception FID over the
objectives, and the pairs they order differently, on scores whose answer is known."""

import pandas as pd
import pytest

from analysis import metric_agreement as ma


def points(fd: dict, fid: dict, seeds=(0, 1)) -> pd.DataFrame:
    rows = []
    for method in fd:
        for s in seeds:
            rows.append({"method": method, "seed": s, "extractor": "fashion", "fd": fd[method] + s})
            rows.append(
                {"method": method, "seed": s, "extractor": "inception", "fd": fid[method] - s}
            )
    return pd.DataFrame(rows)


def test_one_swapped_pair_is_named_and_tau_is_its_closed_form():
    fd = {"purr": 60.0, "cfm": 68.0, "dfm": 69.0, "gidd": 80.0}
    fid = {"purr": 20.0, "cfm": 25.0, "dfm": 24.0, "gidd": 30.0}  # dfm and cfm swap
    means = ma.table(points(fd, fid))
    assert list(means.index) == ["purr", "cfm", "dfm", "gidd"] and (means["seeds"] == 2).all()
    assert means.loc["cfm", "fd_fashion"] == pytest.approx(68.5)  # the mean over the seeds
    result = ma.agreement(means, "fd_fashion", "fid_inception")
    assert result["discordant"] == [("cfm", "dfm")]
    assert result["tau"] == pytest.approx((5 - 1) / 6)  # 5 concordant, 1 discordant of 6
    same = ma.agreement(ma.table(points(fd, fd)), "fd_fashion", "fid_inception")
    assert same["tau"] == pytest.approx(1.0) and same["discordant"] == []


def test_a_run_scored_by_one_metric_is_left_out_of_both(tmp_path, capsys):
    fd = {"a": 1.0, "b": 2.0, "c": 3.0}
    pts = points(fd, fd)
    pts = pts[~((pts["method"] == "a") & (pts["seed"] == 1) & (pts["extractor"] == "inception"))]
    means = ma.table(pts)
    assert means.loc["a", "seeds"] == 1 and means.loc["a", "fd_fashion"] == pytest.approx(1.0)
    pts.to_csv(tmp_path / "p.csv", index=False)
    result = ma.main(["--points", str(tmp_path / "p.csv"), "--out", str(tmp_path / "out")])
    assert result["tau"] == pytest.approx(1.0)
    assert (tmp_path / "out" / "metric_agreement.csv").is_file()
    assert "ordered differently: none" in capsys.readouterr().out


def test_too_few_objectives_or_one_metric_are_refused(tmp_path):
    two = points({"a": 1.0, "b": 2.0}, {"a": 1.0, "b": 2.0})
    two.to_csv(tmp_path / "two.csv", index=False)
    with pytest.raises(SystemExit):
        ma.main(["--points", str(tmp_path / "two.csv"), "--out", str(tmp_path)])
    one = points({"a": 1.0, "b": 2.0, "c": 3.0}, {"a": 1.0, "b": 2.0, "c": 3.0})
    one[one["extractor"] == "fashion"].to_csv(tmp_path / "one.csv", index=False)
    with pytest.raises(SystemExit):
        ma.main(["--points", str(tmp_path / "one.csv"), "--out", str(tmp_path)])
