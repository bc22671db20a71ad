"""Run lifecycle: exact resume after real kills, relaunch safety, non-finite stops, start-up
validation, signals and failure status.

The kill test runs the real ``experiments/run.py`` in subprocesses
(tests/helpers/launch_with_fault.py injects one fault per launch) and compares with an
uninterrupted run made in this process:
resume must not depend on what a process built, or drew random numbers for, before training.
"""

import glob
import json
import os
import subprocess
import sys
import time

import pytest
import torch
from helpers.proc import kill_tree, run_tree
from test_runner import metric_rows

from experiments.runner import checkpoint
from experiments.runner.checks import validation_errors
from experiments.runner.errors import NonFiniteLossError, RunRefused
from experiments.runner.rundir import RunDir
from shared.paths import REPO_ROOT

FAULT = [sys.executable, str(REPO_ROOT / "tests" / "helpers" / "launch_with_fault.py")]


def launch(env, run_dir, mode="none", n=0, extra=()):
    cmd = FAULT + [mode, str(n), "--", "method=purr", f"hydra.run.dir={run_dir}"]
    cmd += env["overrides"] + list(extra)
    return run_tree(
        cmd, cwd=env["base"], timeout=300, env={**os.environ, "VQBENCH_CACHE": env["cache"]}
    )


def temporaries(run_dir):
    return glob.glob(os.path.join(run_dir, "**", ".*.tmp"), recursive=True)


def summary(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


@pytest.mark.process
def test_killed_and_relaunched_run_equals_uninterrupted(run_in_process, env, tmp_path, monkeypatch):
    full = run_in_process(env, ["method=purr"], tmp_path / "full", monkeypatch)
    reference = metric_rows(tmp_path / "full")
    assert full["total_steps"] == 8 and [int(r["step"]) for r in reference] == [4, 8]
    d = tmp_path / "run"  # checkpoints at steps 3, 4 (evaluation), 6, 8
    p = launch(env, d, "kill-at-step", 2)  # before any checkpoint
    assert p.returncode == -9 and not (d / "checkpoints" / "last.pt").exists()
    p = launch(env, d, "kill-in-checkpoint", 2)  # writing step 4's, after its evaluation row
    assert p.returncode == -9 and len(temporaries(d)) == 1
    assert [int(r["step"]) for r in metric_rows(d)] == [4]
    assert checkpoint.load(str(d / "checkpoints" / "last.pt"))["progress"]["step"] == 3
    p = launch(env, d, "term-at-step", 2)  # resumes at 3; SIGTERM in step 5
    assert p.returncode == 128 + 15, p.stderr[-2000:]
    assert "stopped by SIGTERM at step 5 (checkpoint at step 5)" in p.stderr
    assert summary(d)["status"] == "interrupted" and summary(d)["step"] == 5
    assert temporaries(d) == []  # the orphan of the killed write is gone
    p = launch(env, d, "kill-at-step", 2)  # resumes at 5; killed in step 7
    assert p.returncode == -9
    p = launch(env, d)
    assert p.returncode == 0, p.stderr[-3000:]
    assert metric_rows(d) == reference
    assert summary(d)["status"] == "finished" and temporaries(d) == []
    assert [x["start_step"] for x in summary(d)["launches"]] == [0, 0, 3, 5, 6]

    # a refused relaunch (training config changed) touches nothing, .hydra/ included
    before = {
        f: (d / f).read_bytes()
        for f in (".hydra/config.yaml", "summary.json", "metrics.csv", "checkpoints/last.pt")
    }
    p = launch(env, d, extra=["optim.lr=0.5", "method.z_loss_weight=0.1"])
    assert p.returncode == 2
    assert "optim.lr: checkpoint 0.001, now 0.5" in p.stderr
    assert "method.z_loss_weight" in p.stderr and "allow_changes=[" in p.stderr
    assert {f: (d / f).read_bytes() for f in before} == before


def test_relaunch_rules(run_in_process, env, tmp_path, monkeypatch, capsys):
    d = tmp_path / "run"
    run_in_process(env, ["method=purr"], d, monkeypatch)
    rows = metric_rows(d)
    # with progress bars off, one line every log_every steps, on the console and in run.log,
    # so that a cluster job shows progress before its first evaluation
    out = capsys.readouterr().out
    log = (d / "run.log").read_text().splitlines()
    lines = [x.split("] ", 1)[1] for x in log if "| images" in x]
    assert [x.split(" (")[0] for x in lines] == ["step 2/8", "step 4/8", "step 6/8", "step 8/8"]
    assert lines[1].startswith("step 4/8 (50%) | images 64 | train FLOPs ")
    assert " | loss " in lines[0] and " | lr 0.0001 | " in lines[0] and " img/s | ETA " in lines[0]
    assert lines[-1].endswith("ETA 0:00:00") and all(x in out for x in lines)
    assert sum("[eval] purr step" in x for x in log) == 2
    with pytest.raises(RunRefused, match="method.name: checkpoint 'purr', now 'dfm'"):
        run_in_process(env, ["method=dfm"], d, monkeypatch)
    with pytest.raises(RunRefused, match="optim.weight_decay: checkpoint 0.01, now 0.1"):
        run_in_process(env, ["method=purr", "optim.weight_decay=0.1"], d, monkeypatch)
    assert metric_rows(d) == rows and summary(d)["status"] == "finished"
    # keys that measure nothing may change; the change is recorded
    run_in_process(env, ["method=purr", "eval.batch_size=3"], d, monkeypatch)
    assert summary(d)["launches"][-1]["changed"] == {"eval.batch_size": [20, 3]}
    assert metric_rows(d) == rows
    # a finished run is never relabelled: another sampler, or an allowed training
    # change, would evaluate nothing and only rewrite its label and summary
    before = (d / "summary.json").read_bytes()
    for extra in (
        ["eval.steps=2"],
        ["eval.steps=2", "allow_changes=[eval.steps]"],
        ["method.latent_scale=unit", "allow_changes=[method.latent_scale]"],
    ):
        with pytest.raises(RunRefused, match="is finished \\(step 8 of 8\\).*\n.*runs .*now"):
            run_in_process(env, ["method=purr", *extra], d, monkeypatch)
        assert (d / "summary.json").read_bytes() == before
    assert metric_rows(d) == rows
    # one writer at a time: a held lock refuses a second launch at once, naming the holder
    holder = RunDir(str(d))
    holder.lock()
    try:
        with pytest.raises(RunRefused, match=f'in use by .*"pid": {os.getpid()}'):
            run_in_process(env, ["method=purr"], d, monkeypatch)
    finally:
        holder.release()
    assert summary(d)["status"] == "finished"
    # optim.precision=auto resolves per machine (shared/precision.py); a checkpoint is resumed
    # only in the precision it trained in, which every row records with the sampling one
    from shared import precision

    trained = summary(d)["train_precision"]
    assert {(r["train_precision"], r["eval_precision"]) for r in rows} == {(trained, "fp32")}
    flags = {"fp32": frozenset({"avx512f", "avx512_bf16"}), "bf16": frozenset({"avx512f"})}
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags[trained])
    with pytest.raises(RunRefused, match=f"trained in {trained}, .* optim.precision={trained}"):
        run_in_process(env, ["method=purr"], d, monkeypatch)
    run_in_process(env, ["method=purr", f"optim.precision={trained}"], d, monkeypatch)
    assert summary(d)["launches"][-1]["changed"] == {"optim.precision": ["auto", trained]}
    assert metric_rows(d) == rows


def test_precision_auto_follows_the_hardware(monkeypatch):
    """auto = bf16 where the CPU computes it natively (x86 avx512_bf16/amx_bf16, aarch64 bf16),
    fp32 elsewhere; explicit settings are kept; anything else is refused."""
    from shared import precision

    for flags, expect in (
        (set(), "fp32"),
        ({"avx512f", "avx2"}, "fp32"),
        ({"avx512f", "avx512_bf16"}, "bf16"),
        ({"amx_bf16"}, "bf16"),
        ({"asimd", "bf16"}, "bf16"),
    ):
        monkeypatch.setattr(precision, "cpu_flags", lambda f=flags: frozenset(f))
        assert precision.resolve("auto", "cpu") == expect, flags
        assert precision.resolve("fp32", "cpu") == "fp32"
        assert precision.resolve("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="fp16"):
        precision.resolve("fp16", "cpu")
    monkeypatch.undo()  # the real /proc/cpuinfo parses into flags
    assert "fpu" in precision.cpu_flags() or not os.path.exists("/proc/cpuinfo")
    assert precision.legacy_train_precision("auto", "cpu") == "fp32"
    assert precision.legacy_train_precision("auto", "cuda") == "bf16"


def test_nonfinite_weights_are_never_checkpointed(run_in_process, env, tmp_path, monkeypatch):
    import experiments.runner.train_loop as tl

    real, calls = tl.clip_and_step, {"n": 0}

    def poison_at_6(model, opt, clip):  # step 6's update makes the weights NaN (loss was fine)
        real(model, opt, clip)
        calls["n"] += 1
        if calls["n"] == 6:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))

    monkeypatch.setattr(tl, "clip_and_step", poison_at_6)
    d = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError) as err:
        run_in_process(env, ["method=cfm"], d, monkeypatch)
    msg = str(err.value)
    assert "non-finite by step 6" in msg and f"{d}/checkpoints/last.pt (step 4)" in msg
    assert "optim.lr=<lower> 'allow_changes=[optim.lr]'" in msg
    ck = checkpoint.load(str(d / "checkpoints" / "last.pt"))
    assert ck["progress"]["step"] == 4
    assert all(torch.isfinite(v).all() for v in ck["model"].values())
    assert summary(d)["status"] == "failed" and "NonFiniteLossError" in summary(d)["error"]
    monkeypatch.setattr(tl, "clip_and_step", real)
    with pytest.raises(RunRefused, match="optim.lr"):  # a silent LR change is refused
        run_in_process(env, ["method=cfm", "optim.lr=5e-4"], d, monkeypatch)
    done = run_in_process(
        env, ["method=cfm", "optim.lr=5e-4", "allow_changes=[optim.lr]"], d, monkeypatch
    )
    assert done["status"] == "finished"
    assert done["launches"][-1]["changed"]["optim.lr"] == [1e-3, 5e-4]


def test_failure_while_building_is_recorded(run_in_process, env, tmp_path, monkeypatch):
    import experiments.runner.trainer as trainer

    def broken(*a, **k):
        raise RuntimeError("reference set unreadable")

    monkeypatch.setattr(trainer, "Evaluator", broken)
    with pytest.raises(RuntimeError, match="reference set unreadable"):
        run_in_process(env, ["method=cfm"], tmp_path / "r", monkeypatch)
    s = summary(tmp_path / "r")
    assert s["status"] == "failed" and "reference set unreadable" in s["error"]


@pytest.mark.parametrize(
    "overrides,expect",
    [
        (["budget.batch_size=0"], "budget.batch_size=0"),
        (["eval.points=0"], "eval.points=0"),
        (["log_every=0"], "log_every=0"),
        (["checkpoint_every=0"], "checkpoint_every=0"),
        (["eval.batch_size=0"], "eval.batch_size=0"),
        (["eval.num_samples=0"], "eval.num_samples=0"),
        (["eval.temperature=-0.5"], "eval.temperature=-0.5"),
        (["eval.steps=0"], "eval.steps=0"),
        (["eval.solver=rk4"], "eval.solver='rk4' is not allowed; expected one of euler, heun"),
        (
            ["method=dfm", "eval.solver=heun"],
            "expected one of euler, euler-redraw, maskgit (the samplers of dfm)",
        ),
        (["method=dfm-uniform", "eval.solver=maskgit"], "maskgit and euler-redraw unmask tokens"),
        (["method=dfm-uniform", "method.weighting=mdlm"], "MDLM weight is for the masked source"),
        (["method=dfm", "eval.maskgit.schedule=exp"], "eval.maskgit.schedule='exp'"),
        (["method=dfm-metric", "method.beta_power=0.5"], "method.beta_power=0.5"),
        (["method=dfm-metric", "method.distance=cosine"], "method.distance='cosine'"),
        (["method=dfm-metric", "eval.solver=maskgit"], "(the samplers of dfm-metric)"),
        (["method.head=fused"], "method.head='fused'"),
        (["method.latent_scale=global"], "method.latent_scale='global'"),
        (["method.head_chunk=0"], "method.head_chunk=0"),
        (["method=cfm", "eval.temperature=0.5"], "cfm has no categorical posterior"),
        (["eval.spacing=cubic"], "eval.spacing='cubic'"),
        (["optim.precision=fp16"], "optim.precision='fp16' is not allowed; expected one of auto"),
        (["device=tpu"], "device='tpu'"),
        (["optim.ema_decay=2"], "optim.ema_decay=2.0 is not allowed; expected a number in [0, 1)"),
        (["optim.lr=nan"], "optim.lr=nan"),
        (["optim.betas=[0.9,1.5]"], "optim.betas[1]=1.5"),
        (["eval.cfg_scale=2", "backbone.class_dropout=0"], "never trains it"),
        (["backbone.preset=DiT-Q/3"], "backbone.preset='DiT-Q/3'"),
        (["budget.images=100"], "set exactly one of budget.train_flops and budget.images"),
        (["allow_changes=[optim.lrr]"], "allow_changes names 'optim.lrr'"),
    ],
)
def test_every_setting_is_validated_at_startup(compose, overrides, expect):
    errors = validation_errors(compose(["method=purr"] + overrides))
    assert any(expect in e for e in errors), errors


def test_default_and_paper_configs_validate(compose):
    assert validation_errors(compose(["method=purr"])) == []
    for m in ("cfm", "dfm", "dfm-uniform", "cfm-endpoint", "dfm-mdlm", "dfm-metric"):
        assert validation_errors(compose([f"method={m}"])) == []
    assert validation_errors(compose(["method=dfm", "eval.solver=maskgit"])) == []
    assert validation_errors(compose(["method=cfm", "method.latent_scale=unit"])) == []
    assert validation_errors(compose(["method=purr", "preset=fashion_gpu"])) == []
    cpu = compose(["method=dfm", "preset=fashion_cpu"])  # the frontier's candidate protocol
    assert validation_errors(cpu) == [] and cpu.backbone.preset == "DiT-Nano/1"
    assert cpu.optim.schedule == "constant" and cpu.budget.train_flops == 8e13
    for preset in ("imagenet_sd_xl2", "imagenet_llamagen_b2"):
        cfg = compose(["method=purr", f"preset={preset}", "data.root=/x", "device=auto"])
        assert validation_errors(cfg) == []


def test_the_headline_preset_trains_the_committed_headline_runs_again(compose):
    """preset=fashion_cpu names every training value of the converged headline, so each
    committed run's training identity is what the preset composes today, whatever the defaults
    say (they move to the protocol the frontier chooses)."""
    import json

    from experiments.runner.checkpoint import training_config, training_identity
    from experiments.runner.checks import flat_keys
    from shared.paths import REPO_ROOT

    summaries = sorted((REPO_ROOT / "analysis" / "results" / "fashion_cpu").glob("*/summary.json"))
    assert len(summaries) >= 15
    for path in summaries:
        summary = json.loads(path.read_text())
        cfg = compose([f"method={summary['method']}", "preset=fashion_cpu"])
        composed = training_config(flat_keys(cfg))
        assert composed == summary["train_config"], path
        assert training_identity(flat_keys(cfg)) == summary["train_identity"], path


def test_rows_name_what_measured_them_and_the_live_figure(
    run_in_process, env, tmp_path, monkeypatch
):
    from shared import artifacts
    from shared.tokenizers import FashionVQ

    run_dir = tmp_path / "sweep" / "0_purr_seed0"
    s = run_in_process(env, ["method=purr", "live_figure=true"], run_dir, monkeypatch)
    assert (tmp_path / "sweep" / "analysis" / "convergence.png").stat().st_size > 0
    tok_path = next(o for o in env["overrides"] if o.startswith("tokenizer.path="))
    tok = FashionVQ.load(tok_path.split("=", 1)[1])
    for row in metric_rows(run_dir):
        assert row["tokenizer_sha256"] == tok.weights_sha256[:16]
        assert row["metric_net_sha256"] == artifacts.shipped_digest("fashion-cnn")[:16]
        assert row["reference"] == "fashion-mnist/train n=32" and len(row["reference_sha256"]) == 16
        assert 0 < float(row["fd_real"]) and 0 < float(row["fd_recon"])
    # this test's tokenizer is not the shipped one: the run says its numbers are not comparable
    assert len(s["warnings"]) == 1 and "tokenizer of this run" in s["warnings"][0]


@pytest.mark.process
def test_two_rank_ddp_run_stops_on_sigterm_and_resumes_exactly(env, tmp_path):
    """torchrun, 2 CPU ranks (gloo): SIGTERM reaches both ranks in step 3; they agree to stop
    at the next log boundary (step 4), checkpoint, and the relaunch ends identical to an
    uninterrupted 2-rank run. The first launch extracts the index shards (its own folder), the
    path on which ranks that start at different speeds once entered different collectives."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]

    def launch2(run_dir, mode="none"):
        cmd = (
            torchrun
            + [
                str(REPO_ROOT / "tests" / "helpers" / "launch_with_fault.py"),
                mode,
                "3",
                "--",
                "method=dfm",
                f"hydra.run.dir={run_dir}",
            ]
            + env["overrides"]
        )
        cmd.append(f"data.latents_dir={tmp_path / 'lat'}")  # its own: the first launch extracts
        return run_tree(
            cmd,
            cwd=env["base"],
            timeout=120,
            env={**os.environ, "VQBENCH_CACHE": env["cache"], "OMP_NUM_THREADS": "1"},
        )

    p = launch2(tmp_path / "full")
    assert p.returncode == 0, p.stderr[-3000:]
    assert summary(tmp_path / "full")["world_size"] == 2
    d = tmp_path / "stopped"
    p = launch2(d, "term-at-step")
    assert p.returncode != 0 and "stopped by SIGTERM at step 4" in p.stderr, p.stderr[-3000:]
    assert summary(d)["status"] == "interrupted" and summary(d)["step"] == 4
    p = launch2(d)
    assert p.returncode == 0, p.stderr[-3000:]
    assert metric_rows(d) == metric_rows(tmp_path / "full")


def two_ranks(args, penv, timeout=90):
    """``python ARGS`` as RANK=0 and RANK=1 side by side: (processes, their outputs); on a
    timeout each process's whole tree is killed."""
    procs = [
        subprocess.Popen(
            [sys.executable, *args],
            env={**penv, "RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in (0, 1)
    ]
    try:
        outs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:  # still running (timed out): its tree goes
                kill_tree(p.pid)
    return procs, outs


@pytest.mark.process
def test_ranks_that_see_different_files_take_the_same_collectives(compose, env, tmp_path):
    """The root of the 2-rank abort: rank 1 finds the shard manifest that rank 0 has just
    written, so on its own it would skip the barrier that rank 0 waits in. Rank 0's view
    decides for both (Dist.decide); both then meet in the next all-reduce."""
    from omegaconf import OmegaConf

    cfg = compose(env["overrides"] + ["method=cfm", f"data.latents_dir={tmp_path / 'lat'}"])
    OmegaConf.save(cfg, tmp_path / "cfg.yaml")
    script = str(REPO_ROOT / "tests" / "helpers" / "two_ranks_latents.py")
    penv = {**os.environ, "VQBENCH_CACHE": env["cache"], "OMP_NUM_THREADS": "1"}
    procs, outs = two_ranks([script, str(tmp_path / "cfg.yaml"), str(tmp_path / "store")], penv)
    for r, (p, out) in enumerate(zip(procs, outs, strict=True)):
        assert p.returncode == 0 and f"rank {r}: 64 shard rows, all-reduce 3" in out, out[-3000:]


@pytest.mark.process
def test_a_timed_out_launch_kills_its_whole_process_tree(tmp_path):
    """run_tree kills grandchildren in sessions of their own that ignore SIGTERM (as torchrun's
    ranks, blocked in a collective, do)."""
    pidfile = tmp_path / "grandchild.pid"
    child = (
        "import os, signal, subprocess, sys, time\n"
        "code = 'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "time.sleep(600)'\n"
        "g = subprocess.Popen([sys.executable, '-c', code], start_new_session=True)\n"
        f"open({str(pidfile)!r}, 'w').write(str(g.pid))\n"
        "time.sleep(600)\n"
    )
    with pytest.raises(AssertionError, match="process tree was killed"):
        run_tree([sys.executable, "-c", child], timeout=3)
    grandchild = int(pidfile.read_text())
    for _ in range(50):  # SIGKILL is delivered asynchronously
        try:
            with open(f"/proc/{grandchild}/stat") as f:
                if f.read().split(") ")[1][0] == "Z":  # a zombie awaiting its reaper is dead
                    break
        except FileNotFoundError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"grandchild {grandchild} survived the timeout")


def test_lock_on_a_file_system_without_flock_warns(tmp_path, monkeypatch, capsys):
    import errno
    import fcntl

    def no_flock(*a):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    rd = RunDir(str(tmp_path / "run"))
    rd.lock()  # Lustre without -o flock: the run goes on, with a warning
    assert "does not support flock" in capsys.readouterr().out
    rd.release()


def test_checkpoints_from_before_new_training_keys_resume_unless_the_key_changes(compose):
    """A checkpoint written before method.weighting / method.latent_scale existed resumes
    when they keep the value that reproduces its training; any other value is refused."""
    from experiments.runner.checkpoint import check_resume
    from experiments.runner.checks import flat_keys

    for method, key, other in (
        ("dfm", "method.weighting", "mdlm"),
        ("purr", "method.latent_scale", "unit"),
    ):
        old = {
            k: v
            for k, v in flat_keys(compose([f"method={method}"])).items()
            if k not in ("method.weighting", "method.latent_scale")
            and not k.startswith(("method.maskgit", "method.mdlm_"))
        }
        accepted = check_resume("last.pt", {"config": old}, compose([f"method={method}"]))
        assert key in accepted  # recorded as a change, not refused
        with pytest.raises(RunRefused, match=key):
            check_resume(
                "last.pt", {"config": old}, compose([f"method={method}", f"{key}={other}"])
            )


def test_a_run_with_rows_keeps_its_measurement_unless_a_mix_is_asked_for(compose):
    """A dfm run relaunched with eval.solver=maskgit must not write rows labelled dfm and
    dfm-maskgit into one metrics.csv: once a run has rows, a key that changes what they
    measure is refused unless allow_changes names it; before its first row it may change."""
    from experiments.runner.checkpoint import check_relabel
    from experiments.runner.checks import flat_keys

    ck = {"config": flat_keys(compose(["method=dfm"])), "progress": {"step": 4}, "total_steps": 8}
    assert check_relabel("last.pt", ck, compose(["method=dfm"]), evaluated=True) is None
    for key, value in (
        ("eval.solver", "maskgit"),
        ("eval.temperature", 0.5),
        ("eval.cfg_scale", 2.0),
        ("eval.num_samples", 10),
    ):
        cfg = compose(["method=dfm", f"{key}={value}"])
        msg = check_relabel("last.pt", ck, cfg, evaluated=True)
        assert f"{key}: rows" in msg and f"allow_changes=[{key}]" in msg
        assert check_relabel("last.pt", ck, cfg, evaluated=False) is None
        allowed = compose(["method=dfm", f"{key}={value}", f"allow_changes=[{key}]"])
        assert check_relabel("last.pt", ck, allowed, evaluated=True) is None
    # batching and the figure measure nothing
    cfg = compose(["method=dfm", "eval.batch_size=3", "eval.grid_samples=4"])
    assert check_relabel("last.pt", ck, cfg, evaluated=True) is None
    # finished: nothing left to do, so any relabel is refused, allowed or not; a larger
    # budget (allowed by check_resume) continues the run and is not a relabel
    done = {**ck, "progress": {"step": 8}}
    cfg = compose(["method=dfm", "eval.solver=maskgit", "allow_changes=[eval.solver]"])
    assert "is finished (step 8 of 8)" in check_relabel("last.pt", done, cfg, evaluated=True)
    cfg = compose(["method=dfm", "budget.images=9999", "allow_changes=[budget.images]"])
    assert check_relabel("last.pt", done, cfg, evaluated=True) is None


def test_mdlm_checkpoints_from_before_its_time_range_are_refused_naming_the_keys(compose):
    """method.mdlm_eps / mdlm_stratified change training only under weighting=mdlm:
    an old dfm checkpoint resumes, an old dfm-mdlm one (trained on t up to 1) is refused."""
    from experiments.runner.checkpoint import check_resume
    from experiments.runner.checks import flat_keys

    def old(method):
        return {
            k: v
            for k, v in flat_keys(compose([f"method={method}"])).items()
            if not k.startswith("method.mdlm_")
        }

    accepted = check_resume("last.pt", {"config": old("dfm")}, compose(["method=dfm"]))
    assert "method.mdlm_eps" in accepted
    with pytest.raises(RunRefused, match="method.mdlm_eps.*\n.*method.mdlm_stratified"):
        check_resume("last.pt", {"config": old("dfm-mdlm")}, compose(["method=dfm-mdlm"]))


def test_the_runner_never_imports_the_analysis_layer():
    """experiments/runner/ is the library under every command; analysis/ reads its outputs.
    The dependency runs one way (the live figure is a hook that experiments/run.py wires)."""
    import ast

    offenders = []
    for path in sorted((REPO_ROOT / "experiments" / "runner").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "analysis"]
    assert offenders == []
    assert len(list((REPO_ROOT / "experiments" / "runner").glob("*.py"))) >= 9


HEAVY = ("torch._dynamo", "torch._inductor", "torchvision", "timm", "diffusers", "torch_fidelity")


def test_a_run_process_imports_none_of_the_slow_packages(env):
    """What every training and sampling process loads (the runner, the DiT, a tokenizer, the
    fd_fashion extractor, deterministic kernels, the optimizer's step) imports none of
    torchvision, timm, diffusers, torch-fidelity or dynamo: ≈ 4 CPU-s of imports per process
    that the process tests pay dozens of times (`make test`'s time; see
    shared/tokenizers/vqmodel.py and shared/optim.py)."""
    code = (
        "import sys; sys.argv = ['run.py']; import experiments.run\n"
        "from experiments.runner import trainer, evaluation, build, train_loop\n"
        "from shared.backbone import build_dit\n"
        "from shared.tokenizers import load_tokenizer\n"
        "from shared.metrics import build_extractor, compute_metrics\n"
        "import methods, torch\n"
        f"tok = load_tokenizer('fashion-vq', {env['overrides'][1].split('=', 1)[1]!r})\n"
        "fe = build_extractor('fashion')\n"
        "trainer.set_deterministic()\n"
        "from shared.optim import build_adamw, clip_and_step\n"  # the training step's update
        "m = torch.nn.Linear(3, 2); opt = build_adamw(m.parameters(), 1e-3)\n"
        "m(torch.randn(4, 3)).sum().backward(); clip_and_step(m, opt, 1.0)\n"
        "opt.zero_grad(set_to_none=True); opt.load_state_dict(opt.state_dict())\n"
        "assert torch.are_deterministic_algorithms_enabled()\n"
        "assert torch.is_deterministic_algorithms_warn_only_enabled()\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    penv = {**os.environ, "VQBENCH_CACHE": env["cache"]}
    p = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=penv,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip().splitlines()[-1] == "[]", p.stdout


@pytest.mark.parametrize("tok", ["sd", "llamagen"])
def test_imagenet_presets_are_flop_matched_and_name_the_paper_setting(compose, tok):
    """Each ImageNet preset's budget is the FLOPs cfm spends on 400M images on that
    backbone (recomputed here from the analytic count, on the meta device); budget=
    imagenet_iters is the paper's 400M images for every method; setting images on top of a
    FLOP budget is refused naming both keys and the fix."""
    import torch

    import methods
    from experiments.runner.config import PAPER_IMAGES
    from shared.backbone import build_dit

    d = {"sd": 4, "llamagen": 8}[tok]
    for b in ("b2", "l2", "xl2"):
        preset = f"preset=imagenet_{tok}_{b}"
        cfg = compose(["method=purr", preset, "data.root=/x"])
        assert validation_errors(cfg) == [] and cfg.budget.images is None
        cfm = methods.build("cfm", codebook=torch.randn(16, d))
        with torch.device("meta"):
            net = build_dit(
                cfg.backbone.preset, input_size=(32, 32), num_classes=1000, **cfm.model_kwargs()
            )
        # one number per backbone: LlamaGen's 8-dim codes add 0.03% to cfm's count over SD's 4
        assert cfg.budget.train_flops == pytest.approx(PAPER_IMAGES * net.train_flops(1), 5e-4)
        iters = compose(["method=purr", preset, "data.root=/x", "budget=imagenet_iters"])
        assert validation_errors(iters) == []
        assert (iters.budget.images, iters.budget.train_flops) == (PAPER_IMAGES, None)
    both = compose(
        ["method=purr", f"preset=imagenet_{tok}_b2", "data.root=/x", "budget.images=400000000"]
    )
    (err,) = [e for e in validation_errors(both) if "exactly one" in e]
    assert "budget.train_flops=null" in err and "budget=imagenet_iters" in err


@pytest.mark.parametrize("mode", ["ok", "fail"])
def test_rank_zero_work_outlasts_the_collective_timeout(tmp_path, mode):
    """Rank 0 builds the evaluator (the reference set, the baselines) for longer than the
    group's collective timeout (3.5 s against 2 s) while rank 1 waits by polling a file; rank
    0's failure reaches rank 1 as an error naming it."""
    script = str(REPO_ROOT / "tests" / "helpers" / "two_ranks_main_first.py")
    penv = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    procs, outs = two_ranks([script, str(tmp_path / "store"), str(tmp_path), mode], penv)
    if mode == "ok":
        assert [p.returncode for p in procs] == [0, 0], outs
        assert "rank 0: 'built'" in outs[0] and "rank 1: None" in outs[1], outs
        assert not list(tmp_path.glob(".evaluator-*")), "the flag file is left behind"
    else:
        assert [p.returncode for p in procs] == [3, 3], outs
        assert "rank 1 failed: evaluator: rank 0 failed: ValueError: no reference images" in outs[1]
