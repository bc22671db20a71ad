"""Analysis scripts on a synthetic sweep the test writes (with a failed run and a gap)."""

import itertools
import json
import os

import numpy as np
import pandas as pd
import pytest

from analysis import convergence_plot
from analysis.sweeps import latest_sweep, load_sweep


def write_sweep(root):
    sweep = root / "sweeps" / "2026-01-01_00-00-00"
    rng = np.random.default_rng(0)
    job = 0
    for method, rate in (("cfm", 1.0), ("dfm", 0.8), ("purr", 1.5)):
        for seed in (0, 1):
            run = sweep / f"{job}_{method}_seed{seed}"
            run.mkdir(parents=True)
            job += 1
            status = "failed" if (method, seed) == ("dfm", 1) else "finished"
            steps = [25, 50, 75, 100] if status == "finished" else [25]
            rows = [
                {
                    "method": method,
                    "seed": seed,
                    "step": s,
                    "images_seen": 64 * s,
                    "train_flops": 1e9 * s * (1.02 if method != "cfm" else 1.0),
                    "wall_s": 0.9 * s,
                    "loss": 1 / s,
                    "fd_fashion": 100 * np.exp(-rate * s / 50) + rng.normal(0, 1),
                    "kid": 0.1 / s,
                    "precision": 0.5,
                    "recall": 0.3,
                }
                for s in steps
            ]
            if method == "purr" and seed == 1:
                # a metric value that came out non-finite: the trainer writes it as "nan" (a
                # row with no FD at all is a damaged row, refused on read)
                rows[1]["fd_fashion"] = np.nan
            pd.DataFrame(rows).to_csv(run / "metrics.csv", index=False, na_rep="nan")
            summary = {"method": method, "seed": seed, "status": status, "total_steps": 100}
            if status == "failed":
                summary["error"] = "NonFiniteLossError: non-finite loss"
            (run / "summary.json").write_text(json.dumps(summary))
    running = sweep / "6_cfm_seed2"  # started, no evaluation yet
    running.mkdir()
    (running / "summary.json").write_text(
        json.dumps({"method": "cfm", "seed": 2, "status": "running"})
    )
    return sweep


def test_convergence_plot_on_partial_sweep(tmp_path, capsys):
    sweep = write_sweep(tmp_path)
    assert latest_sweep(str(tmp_path / "sweeps")) == str(sweep)
    metrics, runs = load_sweep(str(sweep))
    assert len(runs) == 7 and set(runs["status"]) == {"finished", "failed", "running"}
    convergence_plot.main([str(sweep), "--targets", "50,20"])
    err = capsys.readouterr().err  # every run left out of the final table, named on stderr
    assert "is failed" in err and "NonFiniteLossError" in err and "is running" in err
    analysis = sweep / "analysis"
    for f in (
        "convergence.png",
        "convergence.pdf",
        "convergence_metrics.png",
        "convergence_data.csv",
        "final_metrics.csv",
        "compute_to_reach.csv",
    ):
        assert (analysis / f).stat().st_size > 0, f
    reach = pd.read_csv(analysis / "compute_to_reach.csv")
    # purr decays fastest: it reaches FD ≤ 50 at step 25, cfm only at step 50
    at50 = reach[reach["target"] == 50].set_index("method")
    assert at50.loc["purr", "step_mean"] == 25 and at50.loc["cfm", "step_mean"] == 50
    data = pd.read_csv(analysis / "convergence_data.csv")
    assert data["fd_fashion"].notna().all()  # the gap is dropped, not plotted as zero
    final = pd.read_csv(analysis / "final_metrics.csv", index_col=0)
    assert final.loc["dfm", "seeds"] == 1  # final numbers only from finished runs
    assert (data["run"] == "3_dfm_seed1").sum() == 1  # ...but the failed run is still drawn


def test_no_sweep_gives_clear_error(tmp_path):
    import pytest

    with pytest.raises(FileNotFoundError, match="run `python experiments/run.py -m"):
        latest_sweep(str(tmp_path))


def test_entropy_closed_form():
    import math

    import torch

    from analysis.entropy_maps import entropy

    k = 16
    uniform = torch.full((2, k, 3, 3), 1.0 / k)
    one_hot = torch.nn.functional.one_hot(torch.zeros(2, 3, 3, dtype=torch.long), k)
    assert torch.allclose(entropy(uniform), torch.full((2, 3, 3), math.log(k)))
    assert torch.equal(entropy(one_hot.permute(0, 3, 1, 2).float()), torch.zeros(2, 3, 3))


def test_temperature_sweep_and_entropy_maps_on_trained_runs(
    compose, run_in_process, env, tmp_path, monkeypatch
):
    from omegaconf import OmegaConf

    from analysis import entropy_maps, sample_grids, temperature_sweep

    sweep = tmp_path / "sweep"
    for i, m in enumerate(("purr", "dfm")):
        run_in_process(env, [f"method={m}", "eval.points=1"], sweep / f"{i}_{m}_seed0", monkeypatch)
        # load_trained reads the resolved config that Hydra writes next to the run
        (sweep / f"{i}_{m}_seed0" / ".hydra").mkdir()
        OmegaConf.save(
            compose(env["overrides"] + [f"method={m}"]),
            sweep / f"{i}_{m}_seed0" / ".hydra" / "config.yaml",
        )
    assert temperature_sweep.default_runs(str(sweep)) == [  # in the records' order
        str(sweep / "1_dfm_seed0"),
        str(sweep / "0_purr_seed0"),
    ]
    out = tmp_path / "out"
    temperature_sweep.main(
        [
            "--taus",
            "0,1.5",
            "--num-samples",
            "20",
            "--out",
            str(out),
            str(sweep / "0_purr_seed0"),
            str(sweep / "1_dfm_seed0"),
        ]
    )
    df = pd.read_csv(out / "temperature_sweep.csv")
    assert len(df) == 4 and set(df["method"]) == {"purr", "dfm"}
    for _, grp in df.groupby("method"):  # τ changes the samples, hence the scores
        assert grp["fd"].nunique() == 2
    for f in ("temperature_sweep.png", "temperature_grid_purr.png", "temperature_grid_dfm.png"):
        assert (out / f).stat().st_size > 0
    entropy_maps.main(
        [
            "--samples",
            "2",
            "--times",
            "3",
            "--out",
            str(out),
            str(sweep / "0_purr_seed0"),
            str(sweep / "1_dfm_seed0"),
        ]
    )
    curve = pd.read_csv(out / "entropy_vs_t.csv")
    assert set(curve["method"]) == {"purr", "dfm"} and len(curve) == 8  # 4 steps each
    assert (curve["mean_entropy"] >= 0).all() and (curve["mean_entropy"] <= curve["log_k"]).all()
    for f in ("entropy_maps_purr.png", "entropy_maps_dfm.png", "entropy_vs_t.png"):
        assert (out / f).stat().st_size > 0
    # running summaries instead of every posterior, equal to the entropies of the full
    # trace; --steps sets the sampling steps
    import torch

    from experiments.runner.build import load_trained

    run = str(sweep / "0_purr_seed0")
    _, _, times, ent, guesses, _ = entropy_maps.trace_run(run, 2, 0, steps=3, n_times=2)
    cfg, tok, method, model = load_trained(run)
    full = method.sample(
        model,
        2,
        tok.grid,
        3,
        y=torch.arange(2) % cfg.data.num_classes,
        generator=torch.Generator().manual_seed(0),
        trace=True,
    ).trace
    posts = [r["posterior"] for r in full if r["posterior"] is not None]
    assert times == [r["t"] for r in full[:3]] and sorted(guesses) == [0, 2]
    torch.testing.assert_close(ent, torch.stack([entropy_maps.entropy(p) for p in posts]))
    assert torch.equal(guesses[2], tok.decode(posts[2].argmax(1)))
    entropy_maps.main(["--samples", "1", "--steps", "2", "--out", str(tmp_path / "e2"), run])
    assert len(pd.read_csv(tmp_path / "e2" / "entropy_vs_t.csv")) == 2
    grid = sample_grids.main([str(sweep), "--out", str(out)])
    assert os.path.getsize(grid) > 0
    # only finished runs are picked, the others named; identity is checked before any
    # sampling; two runs of one label write two grids instead of overwriting one
    import shutil

    run_in_process(
        env, ["method=purr", "eval.points=1", "seed=1"], sweep / "2_purr_seed1", monkeypatch
    )
    unfinished = sweep / "3_dfm_seed0"
    shutil.copytree(sweep / "1_dfm_seed0", unfinished)
    meta = json.loads((unfinished / "summary.json").read_text())
    (unfinished / "summary.json").write_text(json.dumps({**meta, "status": "interrupted"}))
    with pytest.raises(SystemExit, match="3_dfm_seed0: status interrupted, not finished"):
        temperature_sweep.main(["--out", str(out), str(unfinished)])
    other = tmp_path / "other_dfm_seed5"
    shutil.copytree(sweep / "1_dfm_seed0", other)
    meta = json.loads((other / "summary.json").read_text())
    meta["identity"]["tokenizer_sha256"] = "0123456789abcdef"
    (other / "summary.json").write_text(json.dumps(meta))
    fresh = tmp_path / "fresh"
    with pytest.raises(SystemExit, match="measured differently"):
        entropy_maps.main(["--out", str(fresh), str(sweep / "1_dfm_seed0"), str(other)])
    assert not fresh.exists()  # refused before anything was sampled or written
    temperature_sweep.main(
        [
            "--taus",
            "1",
            "--num-samples",
            "20",
            "--out",
            str(fresh),
            str(sweep / "0_purr_seed0"),
            str(sweep / "2_purr_seed1"),
        ]
    )
    assert sorted(p.name for p in fresh.glob("temperature_grid_*.png")) == [
        "temperature_grid_purr_seed0.png",
        "temperature_grid_purr_seed1.png",
    ]


def test_runs_measured_differently_are_never_compared(tmp_path):
    import pytest

    from analysis.sweeps import NotComparableError

    sweep = write_sweep(tmp_path)
    for i, run in enumerate(sorted(sweep.glob("*_seed[01]"))):
        df = pd.read_csv(run / "metrics.csv")
        df["tokenizer_sha256"], df["reference_sha256"] = "tok-a", "ref-a"
        df["metric_net_sha256"] = "net-b" if i == 4 else "net-a"  # one run: another network
        df.to_csv(run / "metrics.csv", index=False, na_rep="nan")
    with pytest.raises(NotComparableError, match=r"net-b[^\n]*: 4_purr_seed0"):
        load_sweep(str(sweep))
    df = pd.read_csv(sweep / "4_purr_seed0" / "metrics.csv").assign(metric_net_sha256="net-a")
    df.to_csv(sweep / "4_purr_seed0" / "metrics.csv", index=False)
    metrics, _ = load_sweep(str(sweep))  # one identity: fine
    assert set(metrics["metric_net_sha256"]) == {"net-a"}
    # rows from before the precisions were recorded read as what that code did on CPU (fp32)
    assert set(metrics["train_precision"]) == {"fp32"} == set(metrics["eval_precision"])
    # a bf16-trained run is another experiment: never averaged with the fp32 ones
    df.assign(train_precision="bf16", eval_precision="fp32").to_csv(
        sweep / "4_purr_seed0" / "metrics.csv", index=False
    )
    with pytest.raises(NotComparableError, match=r"bf16 fp32: 4_purr_seed0"):
        load_sweep(str(sweep))
    df.drop(columns=["metric_net_sha256"]).to_csv(sweep / "4_purr_seed0" / "metrics.csv")
    with pytest.raises(NotComparableError, match="unrecorded"):  # recorded vs not recorded
        load_sweep(str(sweep))


def test_baseline_lines_on_the_fd_axes():
    import matplotlib.pyplot as plt

    data = pd.DataFrame(
        {"fd_fashion": [50.0, 40.0], "fd_real": [9.5, 9.5], "fd_recon": [14.0, 14.0]}
    )
    fig, ax = plt.subplots()
    convergence_plot.draw_baselines(ax, data, "fd_fashion")
    assert sorted(line.get_ydata()[0] for line in ax.lines) == [9.5, 14.0]
    labels = [line.get_label() for line in ax.lines]
    assert any("tokenizer ceiling" in lab for lab in labels)
    fig2, ax2 = plt.subplots()
    convergence_plot.draw_baselines(ax2, data.assign(fd_real=[9.5, 8.0]), "fd_fashion")
    assert len(ax2.lines) == 1  # two protocols (n) in one plot: no single real-image line
    plt.close("all")


def test_two_sweeps_drawn_together_keep_runs_apart(tmp_path, capsys):
    """A variant's sweep (e.g. MaskGIT sampling) is drawn with the main one: runs with the
    same folder name in both stay distinct, and the labels group them."""
    main = write_sweep(tmp_path)
    variant = tmp_path / "sweeps" / "variant"
    run = variant / "1_dfm_seed0"  # the same folder name as a run of the main sweep
    run.mkdir(parents=True)
    rows = [
        {
            "method": "dfm-maskgit",
            "seed": 0,
            "step": s,
            "images_seen": 64 * s,
            "train_flops": 1.02e9 * s,
            "wall_s": s,
            "loss": 1 / s,
            "fd_fashion": 40.0 - s / 10,
            "kid": 0.1,
            "precision": 0.5,
            "recall": 0.3,
        }
        for s in (25, 50, 75, 100)
    ]
    pd.DataFrame(rows).to_csv(run / "metrics.csv", index=False)
    (run / "summary.json").write_text(
        json.dumps({"method": "dfm-maskgit", "seed": 0, "status": "finished"})
    )
    metrics, runs = load_sweep([str(main), str(variant)])
    assert len(runs) == 8 and runs["run"].is_unique
    assert {"2026-01-01_00-00-00/2_dfm_seed0", "variant/1_dfm_seed0"} <= set(runs["run"])
    out = tmp_path / "out"
    convergence_plot.main([str(main), str(variant), "--out", str(out), "--targets", "50"])
    final = pd.read_csv(out / "final_metrics.csv", index_col=0)
    assert "dfm-maskgit" in final.index and "dfm" in final.index


def test_default_categorical_runs_are_chosen_by_label_and_seed(tmp_path):
    from analysis.temperature_sweep import default_runs

    for name, label, seed in [
        ("1_purr_seed1", "purr", 1),
        ("10_purr_seed0", "purr", 0),
        ("4_dfm_seed0", "dfm-mdlm", 0),
        ("12_dfm_seed0", "dfm", 0),
        ("3_dfm-metric_seed2", "dfm-metric", 2),
        ("0_cfm_seed0", "cfm", 0),
        ("5_dfm_seed1", "dfm", 1),
    ]:
        run = tmp_path / name
        (run / "checkpoints").mkdir(parents=True)
        (run / "checkpoints" / "last.pt").write_bytes(b"")
        (run / "summary.json").write_text(
            json.dumps({"method": label, "seed": seed, "status": "finished"})
        )
    got = [os.path.basename(r) for r in default_runs(str(tmp_path))]
    assert got == ["12_dfm_seed0", "3_dfm-metric_seed2", "10_purr_seed0"]  # records' order


def test_ranking_vs_budget_finds_the_crossing_and_both_views(tmp_path, capsys):
    """Two methods whose curves cross: 'slow' starts lower and ends higher than 'fast'. The
    crossing lies between the points where the mean order flips, in both views; the p-value
    agrees with the t table (p(t_{0.975,df}) = 0.05)."""
    from analysis import ranking_vs_budget as rvb

    for df in (2, 4, 10, 30):
        assert abs(rvb.t_two_sided_p(rvb.t975(df), df) - 0.05) < 2e-3
    sweep = tmp_path / "sweeps" / "s"
    rng = np.random.default_rng(0)
    steps = {"fast": [10, 20, 40, 80], "slow": [11, 22, 44, 88]}  # fast: dearer steps
    for job, (method, seed) in enumerate(itertools.product(("fast", "slow"), range(3))):
        run = sweep / f"{job}_{method}_seed{seed}"
        run.mkdir(parents=True)
        rows = []
        for k, s in enumerate(steps[method]):
            fd = (200 * 0.5**k if method == "fast" else 120 * 0.8**k) + rng.normal(0, 1)
            rows.append(
                {
                    "method": method,
                    "seed": seed,
                    "step": s,
                    "train_flops": 1e9 * 2**k,
                    "images_seen": s,
                    "wall_s": s,
                    "fd_fashion": fd,
                    "budget_fraction": s / steps[method][-1],
                }
            )
        pd.DataFrame(rows).to_csv(run / "metrics.csv", index=False)
        (run / "summary.json").write_text(
            json.dumps({"method": method, "seed": seed, "status": "finished"})
        )
    res = rvb.main([str(sweep), "--out", str(tmp_path / "out")])
    flop = res["FLOP-matched"]
    # fast: 200, 100, 50, 25; slow: 120, 96, 76.8, 61.4 → order flips between points 1 and 2
    assert [c["between_k"] for c in flop["crossings"]] == ["0.25-0.5"]  # budget fractions
    assert 2e9 < flop["crossings"][0]["at"] < 4e9 and flop["crossings"][0]["ahead_after"] == "fast"
    assert flop["ranking"][0][2] == "slow < fast" and flop["ranking"][-1][2] == "fast < slow"
    assert len(res["iteration-matched"]["ranking"]) == 4  # at fast's steps 10…80
    for f in ("ranking_vs_budget.png", "ranking_vs_budget.csv", "crossings.csv"):
        assert (tmp_path / "out" / f).stat().st_size > 0


def test_convergence_data_names_what_made_each_row_and_gaps_are_said(tmp_path, capsys):
    """convergence_data.csv carries the identity columns (precisions, metric network, n), so
    precision_check.py reading it alone need not assume; rows without a precision are refused
    there; a comparison that cannot see an identity column says which."""
    from analysis import precision_check

    sweep = write_sweep(tmp_path)
    for run in sweep.iterdir():  # these runs record their precisions and sample count
        if (run / "metrics.csv").is_file():
            df = pd.read_csv(run / "metrics.csv")
            df = df.assign(
                train_precision="fp32",
                eval_precision="fp32",
                num_samples=250,
                metric_net_sha256="abc",
                extractor="fashion",
            )
            df.to_csv(run / "metrics.csv", index=False, na_rep="nan")
    convergence_plot.main([str(sweep), "--out", str(tmp_path / "out")])
    data = pd.read_csv(tmp_path / "out" / "convergence_data.csv")
    for col in ("train_precision", "eval_precision", "num_samples", "metric_net_sha256"):
        assert col in data and data[col].notna().all(), col
    err = capsys.readouterr().err
    assert "do not record tokenizer_sha256, reference_sha256" in err
    old = data.drop(columns=["train_precision"])
    old.to_csv(tmp_path / "old.csv", index=False)
    with pytest.raises(SystemExit, match="do not record train_precision"):
        precision_check.main(
            [
                "--fp32",
                str(tmp_path / "old.csv"),
                "--bf16",
                str(tmp_path / "old.csv"),
                "--out",
                str(tmp_path),
            ]
        )


def test_precision_check_compares_against_seed_noise(tmp_path):
    """bf16 vs fp32 rows matched by method and step: means, seed stds, and the verdict."""
    from analysis import precision_check

    def rows(prec, fds):
        return pd.DataFrame(
            [
                {
                    "method": "purr",
                    "seed": s,
                    "step": step,
                    "fd_fashion": fd,
                    "train_precision": prec,
                }
                for step, per_seed in fds.items()
                for s, fd in enumerate(per_seed)
            ]
        )

    fp32 = rows("fp32", {10: [100.0, 102.0, 104.0], 20: [50.0, 51.0, 52.0]})  # std 2, 1
    bf16 = rows("bf16", {10: [101.0, 103.0, 105.0], 20: [60.0, 61.0, 62.0]})
    out = precision_check.compare_training(fp32, bf16, "fd_fashion").set_index("step")
    assert out.loc[10, "diff"] == pytest.approx(1.0) and out.loc[10, "seed_std"] == 2.0
    assert out.loc[20, "diff"] == pytest.approx(10.0) and out.loc[20, "seed_std"] == 1.0
    assert list(out["within_seed_std"]) == [True, False]
    fp32.to_csv(tmp_path / "fp32.csv", index=False)
    bf16.to_csv(tmp_path / "bf16.csv", index=False)
    with pytest.raises(SystemExit, match="trained in"):  # the sets swapped: refused
        precision_check.main(
            [
                "--fp32",
                str(tmp_path / "bf16.csv"),
                "--bf16",
                str(tmp_path / "fp32.csv"),
                "--out",
                str(tmp_path),
            ]
        )


def test_runs_with_one_label_and_seed_are_refused_not_averaged(tmp_path):
    """A sweep passed twice, or two runs that differ only in an option the label does not
    name: refused, naming the runs (they used to be averaged as one)."""
    from analysis.sweeps import NotComparableError

    sweep = write_sweep(tmp_path)
    with pytest.raises(NotComparableError, match=r"cfm seed 0: .*0_cfm_seed0.*0_cfm_seed0"):
        load_sweep([str(sweep), str(sweep)])
    twin = sweep / "9_purr_seed0"  # e.g. purr with another option, the same label and seed
    twin.mkdir()
    (twin / "summary.json").write_text(
        json.dumps({"method": "purr", "seed": 0, "status": "running"})
    )
    with pytest.raises(NotComparableError, match=r"purr seed 0: 4_purr_seed0, 9_purr_seed0"):
        load_sweep(str(sweep))


def write_runs(sweep, specs, points=4, steps_total=100):
    """Runs as the trainer writes them: specs = [(label, train_config, seed, rows_fn)]."""
    from experiments.runner.checkpoint import training_identity

    for job, (label, config, seed, fd) in enumerate(specs):
        run = sweep / f"{job}_{label}_seed{seed}"
        run.mkdir(parents=True)
        steps = [steps_total * (k + 1) // points for k in range(points)]
        rows = [
            {
                "method": label,
                "seed": seed,
                "step": s,
                "train_flops": 1e9 * s,
                "budget_fraction": s / steps_total,
                "images_seen": s,
                "wall_s": s,
                "loss": 1 / s,
                "fd_fashion": fd(s),
                "solver": "euler",
                "sample_steps": 20,
            }
            for s in steps
        ]
        pd.DataFrame(rows).to_csv(run / "metrics.csv", index=False)
        summary = {
            "method": label,
            "seed": seed,
            "status": "finished",
            "total_steps": steps_total,
            "train_identity": training_identity(config),
            "train_config": config,
            "budget_train_flops": 1e9 * steps_total,
        }
        (run / "summary.json").write_text(json.dumps(summary))
    return sweep


def test_runs_that_differ_in_an_unnamed_option_are_two_series(tmp_path, capsys):
    """dfm-metric at beta_scale 1 and 100, two seeds each: one label, two training
    identities. They are two curves named by the option, each with its 2 seeds (they used to be
    averaged as one, and the table said 'seeds 2' for 4 runs)."""
    base = {"method.name": "dfm-metric", "optim.lr": 1e-3}
    specs = [
        (
            "dfm-metric",
            {**base, "method.beta_scale": b},
            seed,
            lambda s, b=b, seed=seed: 100 + b - s / 10 + seed,
        )
        for b in (1.0, 100.0)
        for seed in (0, 1)
    ]
    sweep = write_runs(tmp_path / "sweeps" / "beta", specs)
    metrics, runs = load_sweep(str(sweep))
    assert sorted(metrics["method"].unique()) == [
        "dfm-metric beta_scale=1",
        "dfm-metric beta_scale=100",
    ]
    assert set(metrics["label"]) == {"dfm-metric"} and metrics["train_identity"].nunique() == 2
    convergence_plot.main([str(sweep), "--out", str(tmp_path / "out")])
    final = pd.read_csv(tmp_path / "out" / "final_metrics.csv", index_col=0)
    assert final.loc["dfm-metric beta_scale=100", "seeds"] == 2
    assert final.loc["dfm-metric beta_scale=1", "seeds"] == 2
    assert final.loc["dfm-metric beta_scale=100", "fd_fashion_mean"] == pytest.approx(190.5)
    from analysis import ranking_vs_budget

    res = ranking_vs_budget.main([str(sweep), "--out", str(tmp_path / "rvb")])
    fractions = [k for k, _, _ in res["FLOP-matched"]["ranking"]]
    assert fractions == [0.25, 0.5, 0.75, 1.0]  # 4 budget points, not 8
    # the same config and seed twice (a sweep passed twice) is still refused
    from analysis.sweeps import NotComparableError

    with pytest.raises(NotComparableError, match="train the same config with the same seed"):
        load_sweep([str(sweep), str(sweep)])


def test_rows_of_one_run_under_two_solvers_are_two_series(tmp_path):
    """A run relaunched with another eval setting has rows of both; each setting is its
    own series (the convergence plot used to crash on them)."""
    cfg = {"method.name": "cfm"}
    sweep = write_runs(tmp_path / "sweeps" / "s", [("cfm", cfg, 0, lambda s: 200 - s)])
    run = next(sweep.iterdir())
    df = pd.read_csv(run / "metrics.csv")
    df.loc[2:, "solver"] = "heun"
    df.to_csv(run / "metrics.csv", index=False)
    metrics, _ = load_sweep(str(sweep))
    assert list(metrics["method"]) == ["cfm solver=euler"] * 2 + ["cfm solver=heun"] * 2
    convergence_plot.main([str(sweep), "--out", str(tmp_path / "out")])


def test_budget_points_are_matched_by_fraction_and_budgets_must_agree(tmp_path, capsys):
    """eval.points=2 and =4 on the same budget meet at 50% and 100%, never at 'the 2nd
    evaluation' (50% of one, 25%... of the other); unequal budgets are refused unless --by-flops."""
    from analysis import ranking_vs_budget

    a = write_runs(
        tmp_path / "sweeps" / "a",
        [("cfm", {"m": "cfm"}, s, lambda x: 300 - x) for s in (0, 1)],
        points=2,
    )
    b = write_runs(
        tmp_path / "sweeps" / "b",
        [("purr", {"m": "purr"}, s, lambda x: 250 - x) for s in (0, 1)],
        points=4,
    )
    res = ranking_vs_budget.main([str(a), str(b), "--out", str(tmp_path / "o")])
    ranks = {k: text for k, _, text in res["FLOP-matched"]["ranking"]}
    assert ranks == {0.25: "purr", 0.5: "purr < cfm", 0.75: "purr", 1.0: "purr < cfm"}
    c = write_runs(
        tmp_path / "sweeps" / "c",
        [("cfm", {"m": "cfm"}, s, lambda x: 300 - x) for s in (0, 1)],
        steps_total=200,
    )
    with pytest.raises(SystemExit, match="different budgets"):
        ranking_vs_budget.main([str(c), str(b), "--out", str(tmp_path / "o")])
    res = ranking_vs_budget.main([str(c), str(b), "--by-flops", "--out", str(tmp_path / "o")])
    assert len(res["FLOP-matched"]["ranking"]) == 4  # at purr's FLOPs (its budget is smaller)


def test_one_training_under_two_samplers_is_two_series_not_a_duplicate(tmp_path):
    """The headline's dfm and dfm-maskgit runs train the same config with the same seeds (the
    sampler is an evaluation key): two series, not refused as one run passed twice."""
    cfg = {"method.name": "dfm", "method.source": "mask"}
    s = write_runs(tmp_path / "sweeps" / "s", [("dfm", cfg, 0, lambda x: 200 - x)])
    m = write_runs(tmp_path / "sweeps" / "m", [("dfm-maskgit", cfg, 0, lambda x: 150 - x)])
    metrics, runs = load_sweep([str(s), str(m)])
    assert runs["train_identity"].nunique() == 1
    assert sorted(metrics["method"].unique()) == ["dfm", "dfm-maskgit"]


def test_class_grids_stay_readable_at_any_class_count(tmp_path):
    """One column per class would be 258,002 px wide at 1000 classes, mostly black: at
    most 16 classes (evenly spaced, named in the PNG) and 16 images per class."""
    import torch
    from PIL import Image

    from shared.images import pick_by_class, save_grid

    labels = torch.arange(5000) % 1000  # class-balanced, as the evaluator draws them
    idx, classes, per = pick_by_class(labels, max_classes=16, per_class=16)
    assert len(classes) == 16 and classes[0] == 0 and classes[-1] == 999 and per == 5
    assert (
        classes == sorted(set(classes))
        and (labels[idx].view(16, 5) == torch.tensor(classes).view(16, 1)).all()
    )
    images = torch.randint(0, 256, (5000, 3, 8, 8), dtype=torch.uint8)
    save_grid(
        images[idx], tmp_path / "g.png", nrow=per, text={"classes": " ".join(map(str, classes))}
    )
    png = Image.open(tmp_path / "g.png")
    assert png.size == (5 * 10 + 2, 16 * 10 + 2) and png.text["classes"].split()[-1] == "999"
    # Fashion's 10 classes: the same 10 × 10 grid as before (first 10 images of every class)
    labels = torch.arange(250) % 10
    idx, classes, per = pick_by_class(labels, max_classes=10, per_class=10)
    assert classes == list(range(10)) and per == 10
    assert torch.equal(idx, torch.argsort(labels[:100], stable=True))


def test_save_figure_replaces_files_whole(tmp_path, monkeypatch):
    """A figure is renamed into place: a failed redraw leaves the previous file intact and no
    temporary behind (concurrent runs of one sweep redraw the same live figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from analysis.sweeps import save_figure

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    png, pdf = save_figure(fig, str(tmp_path), "f")
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n" and open(pdf, "rb").read(4) == b"%PDF"
    before = open(png, "rb").read()
    fig, ax = plt.subplots()

    def broken(self, fname, **kw):
        open(fname, "wb").write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(type(fig), "savefig", broken)
    with pytest.raises(OSError, match="disk full"):
        save_figure(fig, str(tmp_path), "f")
    assert open(png, "rb").read() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.pdf", "f.png"]
