"""The learning-rate schedule: warm-up, then constant or warmup-stable-decay (wsd) with a decay
branch per evaluation (experiments/runner/train_loop.py).

The branch test is an independent computation: a branch that forks from a long run must give
exactly the row that a run whose whole budget ends at the branch's end gives.
"""

import csv
import json
import os
import signal

import pytest
import torch

from experiments.runner.train_loop import decay_start, lr_at
from experiments.runner.trainer import decay_plan

# the timing and per-interval loss columns legitimately differ between the two computations
VOLATILE = ("wall_s", "eval_s", "loss", "total_steps", "budget_fraction")


def rows_of(run_dir):
    with open(os.path.join(run_dir, "metrics.csv")) as f:
        return list(csv.DictReader(f))


def measured(row):
    return {k: v for k, v in row.items() if k not in VOLATILE}


def test_lr_warms_up_then_decays_linearly_to_zero_at_the_end():
    # constant: the warm-up ramp (s+1)/w, then lr
    assert [lr_at(s, 1.0, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_at(99, 2.0, 4, end=100) == 2.0  # no decay fraction: constant to the end
    # wsd over 100 steps, fraction 0.2: constant to step 79, then (100 − s)/20 of it
    assert decay_start(100, 0.2) == 80
    assert lr_at(79, 2.0, 4, end=100, decay_fraction=0.2) == 2.0
    assert lr_at(80, 2.0, 4, end=100, decay_fraction=0.2) == 2.0
    assert lr_at(90, 2.0, 4, end=100, decay_fraction=0.2) == pytest.approx(1.0)
    assert lr_at(99, 2.0, 4, end=100, decay_fraction=0.2) == pytest.approx(0.1)
    # a decay phase of at least one step, and the warm-up factor still applies inside it
    assert decay_start(3, 0.1) == 2
    assert lr_at(2, 1.0, 10, end=4, decay_fraction=0.5) == pytest.approx(0.3 * 2 / 2)
    assert lr_at(3, 1.0, 10, end=4, decay_fraction=0.5) == pytest.approx(0.4 * 1 / 2)


def test_decay_plan_forks_one_branch_per_earlier_evaluation():
    assert decay_plan([2, 4, 8, 16], 16, 0.0) == ([2, 4, 8, 16], {})
    # branch e forks at e − round(0.25 e) (at least one step): 2 → 1, 4 → 3, 8 → 6
    assert decay_plan([2, 4, 8, 16], 16, 0.25) == ([16], {1: [2], 3: [4], 6: [8]})
    # two ends that fork at one step are both kept, in order
    assert decay_plan([5, 6, 10], 10, 0.5) == ([10], {3: [5, 6]})  # 5 − round(2.5), 6 − 3


WSD = [
    "method=purr",
    "optim.schedule=wsd",
    "optim.decay_fraction=0.5",
    "optim.warmup_steps=2",
    "budget.images=256",
]  # 16 steps, evaluations at 8 and 16; branch 4 → 8


def test_a_decay_branch_is_exactly_the_end_of_a_shorter_run(
    run_in_process, env, tmp_path, monkeypatch
):
    long = run_in_process(env, WSD, tmp_path / "long", monkeypatch)
    assert long["status"] == "finished" and long["lr_schedule"] == "wsd0.5"
    assert long["decay_branches"] == {"4": [8]} and long["eval_steps"] == [8, 16]
    rows = rows_of(tmp_path / "long")
    assert [(r["step"], r["decay_from"], r["lr_schedule"]) for r in rows] == [
        ("8", "4", "wsd0.5"),
        ("16", "8", "wsd0.5"),
    ]
    # independent: a run whose budget ends at the branch's end (8 steps, one evaluation)
    short = tmp_path / "short"
    run_in_process(env, [*WSD, "budget.images=128", "eval.points=1"], short, monkeypatch)
    assert measured(rows_of(short)[0]) == measured(rows[0])
    # the branch set the run's state aside and restored it exactly: the main line equals a
    # run with no branch at all (one evaluation), row and weights
    alone = tmp_path / "alone"
    run_in_process(env, [*WSD, "eval.points=1"], alone, monkeypatch)
    assert measured(rows_of(alone)[0]) == measured(rows[1])
    a = torch.load(alone / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "long" / "checkpoints" / "last.pt", weights_only=True)
    for part in ("model", "ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part])
    # the last evaluation (the main line's own decay) resets the loss counters, as any does
    assert b["progress"]["loss_count"] == a["progress"]["loss_count"] == 0
    # and the decay changes the weights: a constant-schedule run ends elsewhere
    const = tmp_path / "const"
    run_in_process(env, [*WSD[:1], *WSD[3:], "eval.points=1"], const, monkeypatch)
    c = torch.load(const / "checkpoints" / "last.pt", weights_only=True)
    assert not all(torch.equal(a["model"][k], c["model"][k]) for k in a["model"])
    assert rows_of(const)[0]["lr_schedule"] == "constant" and rows_of(const)[0]["decay_from"] == ""


def test_a_stop_inside_a_branch_resumes_into_the_same_rows(
    run_in_process, env, tmp_path, monkeypatch
):
    from experiments.runner.train_loop import Loop

    full = tmp_path / "full"
    run_in_process(env, WSD, full, monkeypatch)
    part = tmp_path / "part"
    real = Loop.train_at
    seen = {"n": 0}

    def sigterm_in_branch(self, step, end, stream, gen):
        if end < self.parts.total_steps:  # a branch step
            seen["n"] += 1
            if seen["n"] == 2:  # SLURM's warning arrives mid-branch
                self.stop.signum = signal.SIGTERM
        return real(self, step, end, stream, gen)

    monkeypatch.setattr(Loop, "train_at", sigterm_in_branch)
    with pytest.raises(Exception) as stopped:
        run_in_process(env, WSD, part, monkeypatch)
    assert "SIGTERM" in str(stopped.value)
    status = json.loads((part / "summary.json").read_text())
    assert status["status"] == "interrupted" and status["step"] == 4  # the fork, checkpointed
    assert not os.path.exists(part / "metrics.csv") or rows_of(part) == []
    monkeypatch.setattr(Loop, "train_at", real)
    assert run_in_process(env, WSD, part, monkeypatch)["status"] == "finished"
    assert [measured(r) for r in rows_of(part)] == [measured(r) for r in rows_of(full)]
