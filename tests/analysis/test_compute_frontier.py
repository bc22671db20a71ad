"""analysis/compute_frontier.py on runs written as the trainer writes them, with FDs chosen so
that the best size and the rankings are known by hand."""

import json

import pandas as pd
import pytest

from analysis import compute_frontier

BUDGET = 8e12
NOMINAL = [1e12, 2e12, 4e12, 8e12]
# FD at the four budgets: the small model wins the small budgets, the large one the rest
FD = {
    ("cfm", "DiT-Nano/1"): [300, 200, 150, 130],
    ("cfm", "DiT-Micro/1"): [400, 220, 140, 100],
    ("purr", "DiT-Nano/1"): [280, 190, 140, 125],
    ("purr", "DiT-Micro/1"): [410, 210, 130, 95],  # at 1e12: cfm < purr here, not on Nano
}
PARAMS = {"DiT-Nano/1": 1.1e5, "DiT-Micro/1": 8.2e5}
STEPS = {"DiT-Nano/1": 800, "DiT-Micro/1": 96}  # each size rounds its FLOPs differently


def write_frontier(sweep, seeds=(0,)):
    job = 0
    for (label, size), fds in FD.items():
        for seed in seeds:
            run = sweep / f"{job}_{label}_seed{seed}"
            run.mkdir(parents=True)
            job += 1
            total = STEPS[size]
            per_step = BUDGET / total * 0.999  # the budget buys a whole number of steps
            steps = [total // 8, total // 4, total // 2, total]
            rows = [
                {
                    "method": label,
                    "seed": seed,
                    "step": s,
                    "train_flops": s * per_step,
                    "budget_fraction": s / total,
                    "fd_fashion": fd,
                    "num_samples": 1000,
                    "lr_schedule": "wsd0.2",
                }
                for s, fd in zip(steps, fds, strict=True)
            ]
            pd.DataFrame(rows).to_csv(run / "metrics.csv", index=False)
            summary = {
                "method": label,
                "seed": seed,
                "status": "finished",
                "total_steps": total,
                "backbone": size,
                "params": PARAMS[size],
                "budget_train_flops": BUDGET,
                "train_identity": f"{label}-{size}",
                "train_config": {"method.name": label, "backbone.preset": size},
            }
            (run / "summary.json").write_text(json.dumps(summary))
    return sweep


def test_the_envelope_takes_the_best_size_at_every_budget(tmp_path, capsys):
    sweep = write_frontier(tmp_path / "frontier")
    assert compute_frontier.main([str(sweep), "--out", str(tmp_path / "out")]) == 0
    env = pd.read_csv(tmp_path / "out" / "compute_frontier.csv")
    assert env["budget_flops"].tolist() == NOMINAL * 2  # matched despite each size's rounding
    for label in ("cfm", "purr"):
        e = env[env["method"] == label]
        best = [min((FD[(label, s)][k], s) for s in PARAMS) for k in range(4)]
        assert e["best_fd"].tolist() == [fd for fd, _ in best]
        assert e["best_size"].tolist() == [s for _, s in best]
        assert e["fd DiT-Micro/1"].tolist() == FD[(label, "DiT-Micro/1")]
    curves = pd.read_csv(tmp_path / "out" / "frontier_curves.csv")
    micro_cfm = curves[(curves["label"] == "cfm") & (curves["size"] == "DiT-Micro/1")]
    assert micro_cfm["gain_last_doubling"].iloc[0] != micro_cfm["gain_last_doubling"].iloc[0]
    assert micro_cfm["gain_last_doubling"].iloc[-1] == pytest.approx(1 - 100 / 140)
    out = capsys.readouterr().out
    # at 1e12 the two sizes rank the methods differently; at 8e12 they agree
    assert "budget 1e+12 FLOPs: ranking DEPENDS on the size" in out
    assert "budget 8e+12 FLOPs: ranking the same at every size" in out
    assert (tmp_path / "out" / "compute_frontier.png").is_file()


def test_a_frontier_with_several_seeds_is_refused(tmp_path):
    sweep = write_frontier(tmp_path / "frontier", seeds=(0, 1))
    with pytest.raises(ValueError, match="one-seed scan"):
        compute_frontier.main([str(sweep), "--out", str(tmp_path / "out")])
