"""A run never trusts a damaged file and never loses a finished run.

Each test damages one file of a finished tiny run, as a disk, a copy or a user would, and
checks that the relaunch (or a sampler's load) either repairs it exactly or refuses in one
line naming the file and the fix, leaving the run as it was.
"""

import glob
import json
import os
import resource
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from experiments.runner.errors import RunError, RunRefused
from shared.io import take_flock
from shared.paths import REPO_ROOT


@pytest.fixture(scope="module")
def finished(env, tmp_path_factory):
    """A finished tiny cfm run (evaluations at steps 4 and 8), made once; copy it, never edit."""
    from helpers.runs import compose

    from experiments.runner.trainer import run

    run_dir = tmp_path_factory.mktemp("finished") / "run"
    old = os.environ.get("VQBENCH_CACHE")
    os.environ["VQBENCH_CACHE"] = env["cache"]
    try:
        run(compose(env["overrides"] + ["method=cfm"]), str(run_dir))
    finally:
        os.environ.pop("VQBENCH_CACHE") if old is None else os.environ.update(VQBENCH_CACHE=old)
    return run_dir


@pytest.fixture
def copy(finished, tmp_path):
    d = tmp_path / "run"
    shutil.copytree(finished, d)
    return d


def relaunch(run_in_process, env, d, monkeypatch, *extra):
    return run_in_process(env, ["method=cfm", *extra], d, monkeypatch)


def summary(d):
    return json.loads((d / "summary.json").read_text())


def files(d):
    """Every file's bytes but the lock and run.log (a launch appends to the log)."""
    out = {}
    for p in sorted(glob.glob(str(d / "**" / "*"), recursive=True)):
        name = os.path.relpath(p, d)
        if os.path.isfile(p) and name not in (".lock", "run.log"):
            out[name] = open(p, "rb").read()
    return out


@pytest.mark.parametrize("damage", ["last row lost", "line cut", "byte changed"])
def test_a_damaged_metrics_csv_is_rewritten_from_the_checkpoint(
    copy, run_in_process, env, monkeypatch, capsys, damage
):
    # main: a lost row made the relaunch rewrite summary.json's final FD from the row before;
    # a cut line was kept with blank metrics
    metrics = copy / "metrics.csv"
    good, final = metrics.read_text(), summary(copy)["final"]
    lines = good.splitlines(keepends=True)
    assert len(lines) == 3  # header and the evaluations at steps 4 and 8
    broken = {
        "last row lost": "".join(lines[:2]),
        "line cut": "".join(lines[:2]) + lines[2][: len(lines[2]) // 3],
        "byte changed": good.replace(f",{final['fd_fashion']},", ",1.5,"),
    }[damage]
    assert broken != good
    metrics.write_text(broken)
    relaunch(run_in_process, env, copy, monkeypatch)
    assert metrics.read_text() == good
    assert summary(copy)["status"] == "finished"
    assert float(summary(copy)["final"]["fd_fashion"]) == final["fd_fashion"]
    kept = glob.glob(str(copy / "metrics.csv.damaged-*"))
    assert len(kept) == 1 and open(kept[0]).read() == broken  # nothing is lost
    err = [x for x in capsys.readouterr().err.splitlines() if str(metrics) in x]
    assert len(err) == 1 and "rewrote its 2 rows from" in err[0]


def test_a_checkpoint_from_before_the_rows_copy_refuses_a_damaged_file(
    copy, run_in_process, env, monkeypatch
):
    ckpt = copy / "checkpoints" / "last.pt"
    ck = torch.load(ckpt, weights_only=True)
    legacy = {k: v for k, v in ck.items() if k not in ("metrics_csv", "digest")}
    torch.save(legacy, ckpt)
    metrics = copy / "metrics.csv"
    metrics.write_text("".join(metrics.read_text().splitlines(keepends=True)[:2]))
    before = files(copy)
    with pytest.raises(
        RunRefused, match=r"metrics.csv has no row for the final evaluation at step 8, which"
    ):
        relaunch(run_in_process, env, copy, monkeypatch)
    assert files(copy) == before
    metrics.write_text("method,step\ncfm,4,x\n")
    with pytest.raises(RunRefused, match=r"line 2 is damaged: it has more fields than"):
        relaunch(run_in_process, env, copy, monkeypatch)


def test_resume_false_never_trains_over_a_run_unless_asked(copy, run_in_process, env, monkeypatch):
    # main: `method=purr resume=false` turned a finished cfm folder into a purr run
    before = files(copy)
    for method in ("cfm", "purr"):
        held = r"holds a finished cfm run \(step 8 of 8, 2 evaluation rows\)"
        with pytest.raises(RunRefused, match=held):
            run_in_process(env, [f"method={method}", "resume=false"], copy, monkeypatch)
        assert files(copy) == before
    run_in_process(env, ["method=purr", "resume=false", "overwrite=true"], copy, monkeypatch)
    assert summary(copy)["method"] == "purr" and summary(copy)["status"] == "finished"
    assert {r.split(",")[0] for r in (copy / "metrics.csv").read_text().splitlines()[1:]} == {
        "purr"
    }


def test_a_failed_relaunch_does_not_demote_a_finished_run(copy, run_in_process, env, monkeypatch):
    # main: a relaunch that failed while building (here: its shards are gone and may not be
    # extracted) marked the finished run `failed`, and the analysis dropped it
    from experiments.runner import trainer

    def broken(*a, **k):
        raise trainer.RunError("the index shards are missing")

    monkeypatch.setattr(trainer, "prepare_latents", broken)
    with pytest.raises(trainer.RunError, match="shards are missing"):
        relaunch(run_in_process, env, copy, monkeypatch)
    after = summary(copy)
    assert after["status"] == "finished" and "shards are missing" in after["relaunch_error"]


def test_a_finished_run_without_its_checkpoint_is_not_retrained(
    copy, run_in_process, env, monkeypatch
):
    # main: it retrained silently from step 0
    os.remove(copy / "checkpoints" / "last.pt")
    before = files(copy)
    with pytest.raises(RunRefused, match=r"last.pt is missing, but .* holds a finished cfm run"):
        relaunch(run_in_process, env, copy, monkeypatch)
    assert files(copy) == before


def flip_a_weight_bit(path):
    """Flip one bit inside the EMA's largest (trained) tensor, found by its bytes in the file."""
    ck = torch.load(path, weights_only=True)
    tensor = max(ck["ema"].values(), key=torch.Tensor.numel)
    pattern = tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes()[:64]
    data = bytearray(open(path, "rb").read())
    at = data.find(pattern)
    assert at > 0
    data[at + 5] ^= 0x10
    open(path, "wb").write(bytes(data))


@pytest.mark.parametrize("damage", ["bit flipped", "truncated"])
def test_a_damaged_checkpoint_is_refused_and_the_run_stays_finished(
    copy, run_in_process, env, monkeypatch, damage
):
    # main: a flipped bit sampled garbage with exit 0; a truncated checkpoint marked the
    # finished run `failed`, which the analysis then dropped
    from experiments.runner.build import load_trained

    ckpt = copy / "checkpoints" / "last.pt"
    if damage == "bit flipped":
        flip_a_weight_bit(ckpt)
        problem = "does not match the sha256 recorded when it was written"
    else:
        ckpt.write_bytes(ckpt.read_bytes()[:5000])
        problem = "cannot read checkpoint .*truncated"
    before = files(copy)
    with pytest.raises(RunRefused, match=problem + ".*the run stays finished.*overwrite=true"):
        relaunch(run_in_process, env, copy, monkeypatch)
    assert files(copy) == before and summary(copy)["status"] == "finished"
    with pytest.raises(RunError, match=problem + ".*restore it from a copy"):
        load_trained(str(copy))


def test_an_unpacked_shipped_checkpoint_is_verified_when_sampled(tmp_path):
    # main: one flipped bit gave 16 identical garbage images and exit 0
    from experiments import shipped_runs
    from experiments.runner.build import load_trained

    name = shipped_runs.names()[0]
    run_dir = shipped_runs.unpack(name, str(tmp_path))
    load_trained(run_dir)  # an intact copy loads
    flip_a_weight_bit(os.path.join(run_dir, "checkpoints", "last.pt"))
    with pytest.raises(RunError, match="sha256.*unpack it again with python experiments/shipp"):
        load_trained(run_dir)


def test_an_unreadable_summary_is_kept_not_replaced(copy, run_in_process, env, monkeypatch):
    # main: the relaunch replaced it, and its launch history was lost
    garbage = '{"status": "finished", "launches": [{"start_step": 0'
    (copy / "summary.json").write_text(garbage)
    relaunch(run_in_process, env, copy, monkeypatch)
    kept = glob.glob(str(copy / "summary.json.unreadable-*"))
    assert len(kept) == 1 and open(kept[0]).read() == garbage
    new = summary(copy)
    assert new["status"] == "finished"
    assert new["launches"][-1]["unreadable_summary_kept_as"] == kept[0]


def run_py(env, run_dir, *extra, preexec=None, timeout=240):
    cmd = [sys.executable, str(REPO_ROOT / "experiments" / "run.py"), f"hydra.run.dir={run_dir}"]
    return subprocess.run(
        cmd + env["overrides"] + list(extra),
        cwd=env["base"],
        env={**os.environ, "VQBENCH_CACHE": env["cache"]},
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=preexec,
    )


@pytest.mark.process
def test_a_refused_launch_writes_no_hydra_files(env, tmp_path):
    # main: Hydra wrote the refused launch's .hydra/ (purr) into the folder the owner (cfm)
    # was training in, before the lock refused it
    d = tmp_path / "run"
    d.mkdir()
    held, _ = take_flock(d / ".lock")  # the owner, between its lock and its first files
    try:
        p = run_py(env, d, "method=purr")
    finally:
        held.close()
    assert p.returncode == 2 and "is in use by" in p.stderr.strip().splitlines()[-1]
    assert set(os.listdir(d)) <= {".lock", "run.log"} and not (d / "run.log").read_text()
    # the launch that owns the folder writes its own files, the config resolved (the rate
    # the per-objective table gave it, not "${method_lr:}")
    table = ("optim.lr=${method_lr:}", "+optim.lr_by_method={cfm: 3e-3}")
    p = run_py(env, d, "method=cfm", "budget.images=64", "eval.points=1", *table)
    assert p.returncode == 0, p.stderr
    assert "method=cfm" in (d / ".hydra" / "overrides.yaml").read_text()
    config = (d / ".hydra" / "config.yaml").read_text()
    assert config.startswith("method:\n  name: cfm\n") and "  lr: 0.003\n" in config
    assert (d / ".run" / "hydra" / "overrides.yaml").read_text() == (
        d / ".hydra" / "overrides.yaml"
    ).read_text()


def file_size_limit(limit):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.process
def test_a_full_disk_is_one_line_and_loses_nothing(env, finished, tmp_path):
    # main: `RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos …`,
    # a traceback, and the same text in summary.json
    d = tmp_path / "run"  # (``finished`` has filled the cache: only the run's files are written)
    p = run_py(env, d, "method=cfm", preexec=file_size_limit(200_000))
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    line = p.stderr.strip().splitlines()[-1]
    ckpt = d / "checkpoints" / "last.pt"
    assert line == (
        f"error: {ckpt}: File too large (EFBIG); raise the file-size limit (ulimit -f) and "
        "relaunch the same command"
    )
    assert summary(d)["status"] == "failed" and summary(d)["error"] == "OSError: " + line[7:]
    assert not glob.glob(str(d / "**" / ".*.tmp"), recursive=True)
    # space freed: the same command resumes and finishes
    p = run_py(env, d, "method=cfm")
    assert p.returncode == 0, p.stderr
    assert summary(d)["status"] == "finished"


@pytest.mark.process
def test_a_run_folder_that_cannot_be_created_is_one_line(env, tmp_path):
    # main: Hydra's NotADirectoryError traceback, before any of the project's code ran
    (tmp_path / "file").write_text("")
    for key in ("hydra.run.dir", "hydra.sweep.dir"):
        p = run_py(env, tmp_path / "unused", "method=cfm", f"{key}={tmp_path}/file/run")
        assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
        assert p.stderr.strip().splitlines()[-1] == (
            f"error: cannot create the run folder: {tmp_path}/file: Not a directory (ENOTDIR); "
            "a part of the path is a file, not a folder: choose another path"
        )
