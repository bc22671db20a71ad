"""analysis/metric_noise.py: metric noise (one run, many sampling seeds) against seed spread
(many training seeds), checked against numpy's sample standard deviations."""

import numpy as np
import pandas as pd
import pytest

from analysis import metric_noise


def test_noise_and_spread_are_sample_standard_deviations_and_their_ratio():
    noise = {"cfm": [100.0, 101.5, 99.0, 100.7], "purr": [92.0, 92.4, 91.1]}
    trained = {"cfm": [100.3, 103.5, 103.0], "purr": [91.3, 93.6, 91.6]}
    scores = pd.DataFrame([{"method": m, "fd": v} for m, vs in noise.items() for v in vs])
    final = pd.DataFrame([{"method": m, "fd_fashion": v} for m, vs in trained.items() for v in vs])
    out = metric_noise.summarise(scores, metric_noise.seed_spread(final, "fd_fashion"))
    out = out.set_index("method")
    for m in noise:
        assert out.loc[m, "eval_seeds"] == len(noise[m])
        assert out.loc[m, "noise_std"] == pytest.approx(np.std(noise[m], ddof=1))
        assert out.loc[m, "seed_std"] == pytest.approx(np.std(trained[m], ddof=1))
        assert out.loc[m, "seed_mean"] == pytest.approx(np.mean(trained[m]))
        ratio = np.std(trained[m], ddof=1) / np.std(noise[m], ddof=1)
        assert out.loc[m, "spread_over_noise"] == pytest.approx(ratio)


def test_a_method_without_training_seeds_keeps_its_noise_and_gets_no_ratio():
    scores = pd.DataFrame({"method": ["dfm", "dfm"], "fd": [80.0, 82.0]})
    final = pd.DataFrame({"method": ["cfm", "cfm"], "fd_fashion": [100.0, 102.0]})
    out = metric_noise.summarise(scores, metric_noise.seed_spread(final, "fd_fashion"))
    assert out.loc[0, "noise_std"] == pytest.approx(np.sqrt(2.0))
    assert np.isnan(out.loc[0, "spread_over_noise"])


def test_one_noise_seed_is_refused_before_anything_is_sampled(tmp_path):
    with pytest.raises(SystemExit, match="two distinct seeds"):
        metric_noise.main([str(tmp_path), "--eval-seeds", "7,7", "--out", str(tmp_path)])


def test_several_runs_of_a_method_pool_their_noise_and_give_their_spread():
    """Noise pooled within runs (√ mean within-run variance), so the training seeds' spread
    stays out of it; run_std is the spread of the runs' mean FD."""
    runs = {"a": [80.0, 82.0, 81.0], "b": [85.0, 84.0, 86.5], "c": [79.0, 79.5, 77.0]}
    scores = pd.DataFrame(
        [{"method": "dfm", "path": r, "fd": v} for r, vs in runs.items() for v in vs]
    )
    out = metric_noise.summarise(scores, None).set_index("method")
    pooled = np.sqrt(np.mean([np.var(v, ddof=1) for v in runs.values()]))
    assert out.loc["dfm", "noise_std"] == pytest.approx(pooled)
    assert out.loc["dfm", "run_std"] == pytest.approx(
        np.std([np.mean(v) for v in runs.values()], ddof=1)
    )
    assert out.loc["dfm", "runs"] == 3 and out.loc["dfm", "eval_seeds"] == 9
    everything = np.std([v for vs in runs.values() for v in vs], ddof=1)
    assert out.loc["dfm", "noise_std"] < everything  # the unpooled std mixes in the seeds
