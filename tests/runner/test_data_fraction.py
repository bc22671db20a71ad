"""data.fraction: a fixed subset of the training split, for repeated-data comparisons."""

import numpy as np
import pytest
import torch

from experiments.runner.checkpoint import training_config, training_identity
from experiments.runner.checks import flat_keys, validation_errors
from shared.latents import IndexShards, ShardSubset


def test_the_subset_is_fixed_and_gathers_its_own_rows(latents):
    shards = IndexShards(latents)
    a, b = ShardSubset(shards, 0.25), ShardSubset(shards, 0.25, seed=0)
    n = len(shards)
    assert len(a) == round(0.25 * n) and np.array_equal(a.rows, b.rows)  # seeded alone
    assert len(np.unique(a.rows)) == len(a) and a.rows.max() < n
    assert not np.array_equal(a.rows, ShardSubset(shards, 0.25, seed=1).rows)
    local = np.array([0, len(a) - 1, 3])
    for got, want in zip(a.gather(local), shards.gather(a.rows[local]), strict=True):
        assert torch.equal(got, want)


def test_a_run_at_a_fraction_trains_on_the_subset_only(
    env, latents, run_in_process, tmp_path, monkeypatch
):
    seen = []
    gather = IndexShards.gather
    monkeypatch.setattr(
        IndexShards, "gather", lambda self, rows: seen.append(np.array(rows)) or gather(self, rows)
    )
    run_in_process(env, ["method=cfm", "data.fraction=0.25"], tmp_path / "run", monkeypatch)
    subset = ShardSubset(IndexShards(latents), 0.25).rows
    rows = np.concatenate(seen)
    assert len(rows) >= 128 and np.isin(rows, subset).all()
    # 128 images from 1/4 of the split: more repeats than from the whole split would give
    assert len(np.unique(rows)) <= len(subset)


def test_validation_and_identity(compose):
    assert any("data.fraction" in e for e in validation_errors(compose(["data.fraction=0"])))
    assert any("data.fraction" in e for e in validation_errors(compose(["data.fraction=1.5"])))
    assert not validation_errors(compose(["data.fraction=1.0"]))
    full = flat_keys(compose(["method=cfm"]))
    # at 1.0 the key is not part of the identity: the same series as runs from before it
    old = {k: v for k, v in full.items() if k != "data.fraction"}
    assert "data.fraction" not in training_config(full)
    assert training_identity(full) == training_identity(old)
    part = flat_keys(compose(["method=cfm", "data.fraction=0.1"]))
    assert training_config(part)["data.fraction"] == pytest.approx(0.1)
    assert training_identity(part) != training_identity(full)
