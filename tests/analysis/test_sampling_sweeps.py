"""The adaptive dopri5 sampler against closed forms and the oracle; analysis/nfe_sweep.py and
analysis/guidance_sweep.py on tiny trained runs: NFE as counted, the run's own setting
reproducing its own metrics.csv, resume point by point, refusals."""

import json
import math
import os
import shutil

import pandas as pd
import pytest
import torch
from helpers.toy import CODEBOOK, GRID, PROBS, WRONG_PROBS, Oracle, total_variation

import methods
from methods.latent_flow import ADAPTIVE_TAIL, LatentFlowMethod


def test_dopri5_matches_the_closed_form_and_counts_its_calls():
    z0 = torch.randn(3, 4, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = z0 * math.exp(-1.5)  # dz/dt = −(1 + t)·z  →  z(1) = z(0)·e^{−3/2}
    calls, errors = [], []
    for tol in (1e-2, 1e-4, 1e-6):
        seen = []

        def v(t, z, seen=seen):
            seen.append(t)
            return -(1 + t) * z

        z = LatentFlowMethod.integrate_adaptive(v, z0.clone(), "dopri5", tol)
        calls.append(len(seen))
        errors.append((z - exact).abs().max().item())
        assert max(seen) == pytest.approx(1 - ADAPTIVE_TAIL)  # never past 1 − tail
    assert errors[0] < 3e-3 and errors[1] < 3e-5 and errors[2] < 1e-6, errors
    assert calls[0] < calls[1] < calls[2], calls  # tighter tolerance, more calls
    with pytest.raises(ValueError, match="tolerance"):
        LatentFlowMethod.integrate_adaptive(v, z0, "dopri5", 0.0)


@pytest.mark.parametrize("name", ["cfm", "cfm-endpoint", "purr"])
def test_dopri5_reproduces_the_toy_distribution_and_a_wrong_model_fails(name):
    m = methods.build(name, codebook=CODEBOOK.float())
    for probs, should_pass in ((PROBS, True), (WRONG_PROBS, False)):
        model = Oracle(name, probs=probs)
        seen = []

        def counted(x, t, y=None, model=model, seen=seen):
            seen.append(float(t.max()))
            return model(x, t, y)

        g = torch.Generator().manual_seed(0)
        out = m.sample(counted, 4000, GRID, 1, solver="dopri5", tolerance=1e-3, generator=g)
        assert out.nfe == model.calls == len(seen) > 6  # NFE = the calls actually made
        assert max(seen) < 1  # the singular t = 1 is never evaluated
        tv = total_variation(out.indices)
        assert (tv < 0.04) == should_pass, f"{name}: TV {tv:.3f}"


def test_nfe_sweep_points_per_method():
    from analysis.nfe_sweep import points

    cfm = points("purr", {}, [2, 5, 100], [1e-2], positions=64)
    assert [(p["solver"], p.get("steps"), p.get("tolerance")) for p in cfm] == [
        ("euler", 2, None),
        ("euler", 5, None),
        ("euler", 100, None),
        ("heun", 1, None),
        ("heun", 3, None),
        ("heun", 50, None),
        ("midpoint", 1, None),
        ("midpoint", 2, None),
        ("midpoint", 50, None),
        ("dopri5", None, 1e-2),
    ]
    dfm = points("dfm", {"source": "mask"}, [2, 100], [1e-2], positions=64)
    assert [(p["solver"], p["steps"]) for p in dfm] == [
        ("euler", 2),
        ("euler", 100),
        ("maskgit", 2),  # MaskGIT: at most one step per position
    ]
    assert [p["solver"] for p in points("dfm", {"source": "uniform"}, [2], [])] == ["euler"]
    assert [p["solver"] for p in points("dfm-metric", {}, [2], [])] == ["euler"]


@pytest.fixture(scope="module")
def trained(run_in_process, env, tmp_path_factory):
    """A tiny finished sweep: cfm and masked dfm, seed 0."""
    base = tmp_path_factory.mktemp("nfe") / "sweep"
    with pytest.MonkeyPatch.context() as mp:
        for name in ("cfm", "dfm"):
            run_in_process(env, [f"method={name}", "eval.points=1"], base / f"{name}_seed0", mp)
    return base


def last_fd(run):
    return pd.read_csv(run / "metrics.csv")["fd_fashion"].iloc[-1]


def test_nfe_sweep_counts_nfe_reproduces_the_run_and_resumes(env, trained, tmp_path, monkeypatch):
    from analysis import nfe_sweep

    monkeypatch.setenv("VQBENCH_CACHE", env["cache"])
    runs = [str(trained / "cfm_seed0"), str(trained / "dfm_seed0")]
    args = [*runs, "--nfe", "2,4", "--tolerances", "1e-1", "--out", str(tmp_path)]
    df = nfe_sweep.main(args)
    got = {
        (r.method, r.solver, r.steps if r.solver != "dopri5" else r.tolerance): r.nfe
        for r in df.itertuples()
    }
    assert got[("cfm", "euler", 2)] == 2 and got[("cfm", "euler", 4)] == 4
    assert got[("cfm", "heun", 1)] == 1 and got[("cfm", "heun", 2)] == 3  # 2·steps − 1
    assert got[("cfm", "midpoint", 1)] == 2 and got[("cfm", "midpoint", 2)] == 4
    assert got[("cfm", "dopri5", 0.1)] >= 7  # initial step choice + one 6-stage step at least
    assert got[("dfm", "euler", 4)] == 4 and got[("dfm", "maskgit", 2)] == 2
    assert len(df) == 7 + 4 and df["train_identity"].nunique() == 2
    # the run's own protocol (euler, eval.steps=4, EMA weights of the last checkpoint) is the
    # final row of its own metrics.csv: an independent computation of the same number
    for name in ("cfm", "dfm"):
        own = df[(df.method == name) & (df.solver == "euler") & (df.steps == 4)]
        assert own["fd"].iloc[0] == pytest.approx(last_fd(trained / f"{name}_seed0"), rel=1e-6)
    assert (tmp_path / "nfe_sweep.png").is_file() and (tmp_path / "nfe_sweep.pdf").is_file()
    # a relaunch computes nothing and keeps every row
    from experiments.runner.evaluation import Evaluator

    before = (tmp_path / "nfe_sweep.csv").read_text()
    monkeypatch.setattr(Evaluator, "sample_images", lambda *a, **k: pytest.fail("resampled"))
    again = nfe_sweep.main(args)
    assert len(again) == len(df) and (tmp_path / "nfe_sweep.csv").read_text() == before


def test_sweep_resumes_after_a_crash_mid_way(env, trained, tmp_path, monkeypatch):
    from analysis import nfe_sweep
    from experiments.runner.evaluation import Evaluator

    monkeypatch.setenv("VQBENCH_CACHE", env["cache"])
    args = [
        str(trained / "dfm_seed0"),
        "--nfe",
        "1,2,3",
        "--solvers",
        "euler",
        "--out",
        str(tmp_path),
    ]
    real, calls = Evaluator.sample_images, []

    def dies_on_third(self, *a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(Evaluator, "sample_images", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        nfe_sweep.main(args)
    assert len(pd.read_csv(tmp_path / "nfe_sweep.csv")) == 2  # the finished points are kept
    monkeypatch.setattr(Evaluator, "sample_images", real)
    calls.clear()
    full = nfe_sweep.main(args)
    assert sorted(full["steps"]) == [1, 2, 3]
    fresh = nfe_sweep.main([*args[:-1], str(tmp_path / "fresh")])
    assert list(full.sort_values("steps")["fd"]) == list(fresh.sort_values("steps")["fd"])


def test_a_rerun_with_more_samples_replaces_the_points(env, trained, tmp_path, monkeypatch):
    from analysis import nfe_sweep
    from analysis.sampling_sweep import check_one_measurement
    from analysis.sweeps import NotComparableError

    monkeypatch.setenv("VQBENCH_CACHE", env["cache"])
    args = [str(trained / "dfm_seed0"), "--nfe", "2", "--solvers", "euler", "--out", str(tmp_path)]
    first = nfe_sweep.main(args)
    more = nfe_sweep.main([*args, "--num-samples", "12"])
    assert len(first) == len(more) == 1 and list(more["num_samples"]) == [12]
    assert list(first["num_samples"]) == [20]  # the run's protocol, resolved in the key
    table = pd.read_csv(tmp_path / "nfe_sweep.csv")
    assert len(table) == 2  # both measurements kept in the file, one drawn
    assert not any(os.path.isabs(p) for p in table["path"])  # no path of this machine
    # the same run at one setting twice: refused, naming both
    with pytest.raises(NotComparableError, match="n=20.*\n.*n=12"):
        check_one_measurement(table)


def test_guidance_sweep_scale_one_is_the_run_and_guidance_changes_it(
    env, trained, tmp_path, monkeypatch
):
    from analysis import guidance_sweep

    monkeypatch.setenv("VQBENCH_CACHE", env["cache"])
    run = trained / "dfm_seed0"
    df = guidance_sweep.main([str(run), "--scales", "1,3", "--out", str(tmp_path)])
    by = df.set_index("cfg_scale")
    assert by.loc[1.0, "fd"] == pytest.approx(last_fd(run), rel=1e-6)
    # (the tiny model barely tells classes apart, so s = 3 draws the same images here: the
    # guided calls over both halves show that the scale reached the sampler)
    assert by.loc[3.0, "nfe_rows"] == 2 * by.loc[3.0, "nfe"] == 8  # both halves, one call
    assert {"precision", "recall", "method", "solver", "nfe"} <= set(df.columns)
    assert (tmp_path / "guidance_sweep.png").is_file()
    mg = guidance_sweep.main(
        [str(run), "--scales", "1", "--solver", "maskgit", "--out", str(tmp_path / "mg")]
    )
    assert list(mg["solver"]) == ["maskgit"]


def test_sweeps_refuse_unfinished_and_repeated_runs(env, trained, tmp_path, monkeypatch, capsys):
    from analysis import nfe_sweep

    monkeypatch.setenv("VQBENCH_CACHE", env["cache"])
    run = tmp_path / "copy_seed0"
    shutil.copytree(trained / "dfm_seed0", run)
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "status": "interrupted"}))
    with pytest.raises(SystemExit, match="status interrupted, not finished"):
        nfe_sweep.main([str(run), "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="train the same config with seed 0"):
        nfe_sweep.main(
            [str(trained / "dfm_seed0"), str(run), "--allow-unfinished", "--out", str(tmp_path)]
        )
    assert not (tmp_path / "nfe_sweep.csv").exists()  # refused before any sampling


def test_digests_read_back_from_csvs_stay_text(tmp_path):
    """A hex digest such as "8e12…" or one of digits only was parsed back as a number, so a
    resumed sweep's rows no longer matched their run's identity (a fresh-clone failure of
    test_sweep_resumes_after_a_crash_mid_way: digests vary with the temporary paths)."""
    import pandas as pd

    from analysis.sampling_sweep import load_done
    from analysis.sweeps import DIGEST_COLUMNS, read_table

    row = dict(
        zip(
            DIGEST_COLUMNS,
            ("8e12345678901234", "0123456789abcdef", "1234567890123456", "00000000000000e5", "7e3"),
            strict=True,
        )
    )
    pd.DataFrame([{"step": 4, **row}]).to_csv(tmp_path / "m.csv", index=False)
    assert read_table(str(tmp_path / "m.csv")).iloc[0].to_dict() == {"step": 4, **row}
    assert load_done(str(tmp_path / "m.csv")).iloc[0][list(row)].to_dict() == row


@pytest.fixture(scope="module")
def held_out(run_in_process, env, tmp_path_factory):
    """A tiny masked-dfm run whose reference fits the toy test split (16 images)."""
    run = tmp_path_factory.mktemp("choice") / "sweep" / "dfm_seed0"
    with pytest.MonkeyPatch.context() as mp:
        run_in_process(env, ["method=dfm", "eval.points=1", "eval.reference_n=16"], run, mp)
    return run


def test_sampler_choice_searches_on_the_held_out_split_and_reports_on_the_runs_own(
    env, held_out, tmp_path, monkeypatch
):
    """choose: every point scored against the test split, stage by stage, never worse than
    the default; report: the default there is the run's own last FD (train split), and the
    chosen setting is sampled beside it. A second choose resamples nothing."""
    from analysis import sampler_choice

    monkeypatch.setenv("VQBENCH_CACHE", env["cache"])
    out = tmp_path / "choice"
    grid = ["--nfe", "2", "--taus", "0.5", "--scales", "2", "--out", str(out)]
    choice = sampler_choice.main(["choose", str(held_out), *grid])
    points = pd.read_csv(out / "sampler_points.csv")
    assert set(points["reference_split"]) == {"test"}
    assert points["reference"].str.contains("/test n=16").all()
    assert set(points["solver"]) == {"euler", "maskgit"}  # stage 1: the masked dfm's solvers
    assert {0.5, 1.0} <= set(points["temperature"]) and {1.0, 2.0} <= set(points["cfg_scale"])
    (c,) = choice.to_dict("records")
    assert c["method"] == "dfm" and c["fd_chosen"] <= c["fd_default"]
    assert c["fd_chosen"] == pytest.approx(points["fd"].min())
    again = sampler_choice.main(["choose", str(held_out), *grid])
    assert len(pd.read_csv(out / "sampler_points.csv")) == len(points)
    assert again.to_dict("records") == choice.to_dict("records")
    report = sampler_choice.main(
        ["report", str(held_out), "--choice", str(out / "sampler_choice.csv"), "--out", str(out)]
    )
    (r,) = report.to_dict("records")
    assert r["fd_default"] == pytest.approx(last_fd(held_out), rel=1e-6)
    assert (r["solver"], r["temperature"], r["cfg_scale"]) == (
        c["solver"],
        c["temperature"],
        c["cfg_scale"],
    )


def test_the_extractor_is_a_setting_and_the_runs_own_is_its_fd(
    env, held_out, tmp_path, monkeypatch
):
    """A point that names the run's own extractor reproduces the run's FD under its own key
    (beside the protocol point's), so a metric cross-check can add Inception beside it."""
    from analysis.sampling_sweep import setting_key, sweep_run

    monkeypatch.setenv("VQBENCH_CACHE", env["cache"])
    csv = str(tmp_path / "points.csv")
    rows = sweep_run(str(held_out), lambda *_: [{"extractor": "fashion"}, {}], csv, [])
    assert len(rows) == 2 and len({r["setting"] for r in rows}) == 2
    assert all(r["extractor"] == "fashion" for r in rows)
    assert rows[0]["fd"] == rows[1]["fd"] == pytest.approx(last_fd(held_out), rel=1e-6)
    assert "extractor" not in setting_key({"solver": "euler"})  # older rows' keys unchanged
