"""The analysis layer trusts no metrics.csv it has not checked: a damaged file ends the command
with one line naming it and its repair (exit 2), and every run a command leaves out is named
on stderr with why."""

import csv
import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from analysis import compute_to_reach, convergence_plot, ranking_vs_budget
from shared.paths import REPO_ROOT

PLAN = [25, 50, 75, 100]
FD0 = {"cfm": 300.0, "purr": 250.0}


# the trainer's columns (experiments/runner/metrics_file.METRIC_COLUMNS), in its order
COLUMNS = (
    "method seed step total_steps images_seen train_flops budget_fraction wall_s loss "
    "fd_fashion fid_inception kid kid_std precision recall inception_score nfe nfe_rows "
    "sample_steps solver temperature cfg_scale num_samples extractor eval_s fd_real fd_recon "
    "tokenizer_sha256 metric_net_sha256 reference reference_sha256 train_precision "
    "eval_precision lr_schedule decay_from"
).split()


def write_csv(path, rows):
    """metrics.csv as the trainer writes it (csv.DictWriter; a column it did not fill: empty)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def row(method, seed, step):
    """A row as the trainer writes it (the columns a Fashion run fills)."""
    return {
        "method": method,
        "seed": seed,
        "step": step,
        "total_steps": PLAN[-1],
        "images_seen": 64 * step,
        "train_flops": 1e9 * step,
        "budget_fraction": step / PLAN[-1],
        "wall_s": 0.5 * step,
        "loss": 1 / step,
        "fd_fashion": FD0[method] * (step / PLAN[0]) ** -0.5 + seed,
        "solver": "euler",
        "sample_steps": 20,
        "num_samples": 1000,
        "extractor": "fashion",
        "tokenizer_sha256": "a1" * 8,
        "metric_net_sha256": "b2" * 8,
        "reference": "fashion-mnist/train n=1000",
        "reference_sha256": "c3" * 8,
        "train_precision": "fp32",
        "eval_precision": "fp32",
    }


def write_run(sweep, name, method, seed, status, steps, error=None):
    """A run folder as the trainer leaves it: summary.json (with its evaluation plan),
    metrics.csv (rows at ``steps``) and the overrides it was launched with."""
    run = sweep / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(f"- method={method}\n- seed={seed}\n")
    summary = {
        "method": method,
        "seed": seed,
        "status": status,
        "total_steps": PLAN[-1],
        "eval_steps": PLAN,
        "train_identity": f"id-{method}",
        "train_config": {"method.name": method},
        "train_precision": "fp32",
    }
    if error:
        summary["error"] = error
    (run / "summary.json").write_text(json.dumps(summary))
    if steps:
        write_csv(run / "metrics.csv", [row(method, seed, s) for s in steps])
    return run


def finished_sweep(root):
    sweep = root / "sweep"
    for job, (method, seed) in enumerate([("cfm", 0), ("purr", 0), ("cfm", 1), ("purr", 1)]):
        write_run(sweep, f"{job}_{method}_seed{seed}", method, seed, "finished", PLAN)
    return sweep


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_a_finished_run_that_lost_its_last_row_is_refused_naming_the_file_and_its_repair(
    tmp_path, capsys
):
    """The run is finished, its plan has 4 evaluations, its file 3: drawn, its "final" FD would
    be step 75's. Refused with one line naming the file, the lost step and the command that
    rewrites the file; the live figure (the trainer's hook) skips the sweep and never raises."""
    sweep = finished_sweep(tmp_path)
    run = sweep / "1_purr_seed0"
    csv = run / "metrics.csv"
    lines = csv.read_text().splitlines(keepends=True)
    csv.write_text("".join(lines[:-1]))  # the last row is gone
    with pytest.raises(SystemExit) as e:
        convergence_plot.main([str(sweep), "--out", str(tmp_path / "out")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    (line,) = error_lines(err)
    assert line.startswith(f"error: {csv}: the run is finished but has no row for the evaluation")
    assert "at step 100;" in line
    assert f"python experiments/run.py method=purr seed=0 hydra.run.dir={run}" in line
    assert "or restore the file from a copy" in line
    assert not (tmp_path / "out" / "convergence.png").exists()
    assert convergence_plot.refresh(str(sweep)) is None
    assert "live figure not updated: MetricsFileError" in capsys.readouterr().out


def test_a_row_cut_mid_line_ends_the_command_with_one_line_not_a_traceback(tmp_path):
    """A row cut mid-line lacks its identity columns: it used to end in a traceback saying the
    runs were measured with different tokenizers or metric networks."""
    sweep = finished_sweep(tmp_path)
    csv = sweep / "2_cfm_seed1" / "metrics.csv"
    text = csv.read_text()
    csv.write_text(text[: text.rstrip("\n").rindex(",euler,")])  # cut in the last row
    p = subprocess.run(
        [sys.executable, str(REPO_ROOT / "analysis" / "convergence_plot.py"), str(sweep)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},  # this checkout's packages
    )
    assert p.returncode == 2, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    (line,) = p.stderr.strip().splitlines()
    assert line.startswith(f"error: {csv}: line 5 is damaged: it ends before column")
    assert "(the line was cut)" in line and "relaunch the run's own command" in line


def test_every_run_left_out_is_named_on_stderr_with_why(tmp_path, capsys):
    """Failed, interrupted, running, unreadable: each left-out run is one line on stderr in
    every command that leaves it out (compute_to_reach used to count an unfinished run as
    "never reaches the level", and ranking_vs_budget named them on stdout)."""
    sweep = finished_sweep(tmp_path)
    write_run(sweep, "4_purr_seed2", "purr", 2, "failed", PLAN[:1], "NonFiniteLossError: nan")
    write_run(sweep, "5_cfm_seed2", "cfm", 2, "interrupted", PLAN[:2])
    write_run(sweep, "6_purr_seed3", "purr", 3, "running", [])
    broken = write_run(sweep, "7_cfm_seed3", "cfm", 3, "finished", PLAN)
    (broken / "summary.json").write_text('{"method": "cfm", "se')
    why = {
        "4_purr_seed2": ("is failed (NonFiniteLossError: nan)",),
        "5_cfm_seed2": ("is interrupted",),
        "6_purr_seed3": ("is running", "no evaluation rows"),
        "7_cfm_seed3": ("summary.json is unreadable (JSONDecodeError",),
    }
    commands = {
        "convergence_plot": lambda out: convergence_plot.main([str(sweep), "--out", out]),
        "ranking_vs_budget": lambda out: ranking_vs_budget.main([str(sweep), "--out", out]),
        "compute_to_reach": lambda out: compute_to_reach.main(
            [str(sweep), "--levels", "200,160", "--out", out]
        ),
    }
    for name, command in commands.items():
        command(str(tmp_path / name))
        err = capsys.readouterr().err.splitlines()
        for run, parts in why.items():
            named = [line for line in err if run in line]
            assert len(named) == 1, (name, run, err)
            assert all(p in named[0] for p in parts), (name, named[0])
        for run in ("0_cfm_seed0", "1_purr_seed0", "2_cfm_seed1", "3_purr_seed1"):
            assert not [line for line in err if run in line], (name, run, err)
    result = pd.read_csv(tmp_path / "compute_to_reach" / "compute_to_reach_ratios.csv")
    assert (result["seeds"] == 2).all() and (result["reached"] == 2).all()  # finished only
