"""analysis/tokenizer_floor.py reproduces its committed floors (slow: it encodes, decodes and
scores 1000 real images per tokenizer)."""

import pandas as pd
import pytest

from analysis import tokenizer_floor

COMMITTED = "analysis/results/fashion_frontier/codebook/tokenizer_floor.csv"


@pytest.mark.slow
def test_the_committed_floors_reproduce(tmp_path):
    got = tokenizer_floor.main(
        ["--tokenizers", "fashion,fashion_k4096", "--num-samples", "1000", "--out", str(tmp_path)]
    ).set_index("tokenizer")
    want = pd.read_csv(COMMITTED).query("num_samples == 1000").set_index("tokenizer")
    for name in ("fashion", "fashion_k4096"):
        assert got.loc[name, "tokenizer_sha256"] == want.loc[name, "tokenizer_sha256"]
        assert got.loc[name, "fd_recon"] == pytest.approx(want.loc[name, "fd_recon"], rel=1e-4)
    assert got.loc["fashion_k4096", "fd_recon"] < got.loc["fashion", "fd_recon"]
