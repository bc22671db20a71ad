"""Each objective at its best sampler, chosen where it cannot flatter itself: on seed 0's final
weights, scored against a held-out reference (the Fashion test split), then reported on the
other seeds against the runs' own reference. Matched NFE: every solver is run at the step
count whose model calls are closest to ``--nfe``.

    python analysis/sampler_choice.py choose SEED0_RUNS --nfe 20 --out DIR
    python analysis/sampler_choice.py report OTHER_RUNS --choice DIR/sampler_choice.csv --out DIR

``choose`` searches one setting at a time, each stage from the best so far (a grid over all
of them would cost their product):

1. the solver, at τ = 1 and no guidance (every fixed-grid solver the options allow);
2. the temperature τ (``--taus``; categorical objectives only);
3. the guidance scale (``--scales``);
4. τ again at that scale (guidance moves the best τ).

It writes ``sampler_choice.csv``: per objective, the chosen setting, its FD on the held-out
split and the protocol's default setting's FD there. ``report`` samples each run at its
objective's chosen setting and at the default, against the run's reference, and writes
``sampler_report.csv``: the two tables of the answer, never mixed. Every point is a row of
``<out>/sampler_points.csv`` (the resumable engine of ``sampling_sweep.py``), so a killed
search loses at most one point.
"""

from __future__ import annotations

import argparse
import os
import sys

import pandas as pd

from analysis.nfe_sweep import solvers_of, steps_for
from analysis.sampling_sweep import check_runs, load_done, run_key, setting_key, sweep_run
from methods.records import record
from shared.io import atomic_write_text
from shared.refusal import refuse

STAGES = ("solver", "temperature", "cfg_scale", "temperature")


def fixed_grid_solvers(cfg) -> list[str]:
    from omegaconf import OmegaConf

    options = OmegaConf.to_container(cfg.method, resolve=True)
    return [s for s in solvers_of(cfg.method.name, options) if s in record(cfg.method.name).solvers]


def candidates(stage: str, best: dict, cfg, grid, nfe: int, taus, scales, split) -> list[dict]:
    """The points of one stage around the best setting so far."""
    positions = grid[0] * grid[1]

    def point(**change):
        p = {**best, **change, "reference_split": split}
        p["steps"] = steps_for(p["solver"], nfe)
        if p["solver"] == "maskgit":
            p["steps"] = min(p["steps"], positions)
        return p

    if stage == "solver":
        return [point(solver=s) for s in fixed_grid_solvers(cfg)]
    if stage == "temperature" and not record(cfg.method.name).categorical:
        return []
    # the grid always holds the best value so far, so that no stage can make the choice worse
    values = sorted(
        {float(v) for v in (taus if stage == "temperature" else scales)} | {float(best[stage])}
    )
    return [point(**{stage: v}) for v in values]


def measured(rows: list[dict], path: str, points: list[dict], n: int) -> list[dict]:
    keys = {setting_key({"num_samples": n, **p}) for p in points}
    return [r for r in rows if r["path"] == path and r["setting"] in keys]


def choose_one(run: str, csv: str, rows: list, args) -> dict:
    """The coordinate search on one run; returns its choice row."""
    from experiments.runner.build import load_trained

    cfg, tok, _, _ = load_trained(run, args.device)
    n = args.num_samples or int(cfg.eval.num_samples)
    default = {"solver": cfg.eval.solver, "temperature": 1.0, "cfg_scale": 1.0}
    best = dict(default)
    path = run_key(run, csv)
    for stage in STAGES:
        points = candidates(
            stage, best, cfg, tok.grid, args.nfe, args.taus, args.scales, args.split
        )
        if not points:
            continue
        rows = sweep_run(run, lambda *_, p=points: p, csv, rows, args.device, args.num_samples)
        got = pd.DataFrame(measured(rows, path, points, n))
        top = got.loc[got["fd"].idxmin()]
        best = {
            "solver": top["solver"],
            "temperature": top["temperature"],
            "cfg_scale": top["cfg_scale"],
        }
    start = candidates("solver", default, cfg, tok.grid, args.nfe, [], [], args.split)
    start = [p for p in start if p["solver"] == default["solver"]]
    base = pd.DataFrame(measured(rows, path, start, n)).iloc[0]
    chosen = candidates("solver", best, cfg, tok.grid, args.nfe, [], [], args.split)
    chosen = pd.DataFrame(
        measured(rows, path, [p for p in chosen if p["solver"] == best["solver"]], n)
    )
    top = chosen.iloc[0]
    return {
        "method": top["method"],
        "run": top["run"],
        "seed": int(top["seed"]),
        "solver": top["solver"],
        "steps": int(top["steps"]),
        "temperature": float(top["temperature"]),
        "cfg_scale": float(top["cfg_scale"]),
        "nfe": float(top["nfe"]),
        "reference_split": args.split,
        "fd_chosen": float(top["fd"]),
        "fd_default": float(base["fd"]),
        "num_samples": n,
    }


def choose(args) -> pd.DataFrame:
    runs = check_runs(args.runs, args.allow_unfinished)
    csv = os.path.join(args.out, "sampler_points.csv")
    rows = load_done(csv).to_dict("records")
    choices = [choose_one(run, csv, rows, args) for run in runs]
    table = pd.DataFrame(choices)
    if table["method"].duplicated().any():
        refuse("choose takes one run per objective (seed 0); two runs share a label")
    atomic_write_text(os.path.join(args.out, "sampler_choice.csv"), table.to_csv(index=False))
    for c in choices:
        print(
            f"{c['method']:14s} {c['solver']} ×{c['steps']} τ={c['temperature']:g} "
            f"s={c['cfg_scale']:g}: FD {c['fd_chosen']:.2f} on {c['reference_split']} "
            f"(default {c['fd_default']:.2f})"
        )
    return table


def report(args) -> pd.DataFrame:
    from experiments.runner.build import load_trained

    if not args.choice or not os.path.isfile(args.choice):
        refuse(f"report needs --choice, the sampler_choice.csv of a choose run (got {args.choice})")
    choice = pd.read_csv(args.choice).set_index("method")
    runs = check_runs(args.runs, args.allow_unfinished)
    csv = os.path.join(args.out, "sampler_points.csv")
    rows = load_done(csv).to_dict("records")
    out = []
    for run in runs:
        cfg, tok, _, _ = load_trained(run, args.device)
        from experiments.runner.labels import method_label

        label = method_label(cfg, sampler=False)
        if label not in choice.index:
            refuse(f"{run}: no choice for {label} in {args.choice}; choose on its seed 0 first")
        c = choice.loc[label]
        n = args.num_samples or int(cfg.eval.num_samples)
        chosen = {
            "solver": c["solver"],
            "steps": int(c["steps"]),
            "temperature": float(c["temperature"]),
            "cfg_scale": float(c["cfg_scale"]),
        }
        default = {"solver": cfg.eval.solver, "steps": int(cfg.eval.steps)}
        points = [default, chosen]
        rows = sweep_run(run, lambda *_, p=points: p, csv, rows, args.device, args.num_samples)
        got = measured(rows, run_key(run, csv), points, n)
        by = {setting_key({"num_samples": n, **p}): p for p in points}
        fds = {by[r["setting"]] is chosen: r["fd"] for r in got}
        out.append(
            {
                "method": label,
                "seed": int(cfg.seed),
                "fd_default": fds[False],
                "fd_best_sampler": fds[True],
                "solver": chosen["solver"],
                "steps": chosen["steps"],
                "temperature": chosen["temperature"],
                "cfg_scale": chosen["cfg_scale"],
                "chosen_on": f"{c['run']} ({c['reference_split']} split)",
            }
        )
    table = pd.DataFrame(out)
    atomic_write_text(os.path.join(args.out, "sampler_report.csv"), table.to_csv(index=False))
    print(table.to_string(index=False))
    return table


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("what", choices=("choose", "report"))
    ap.add_argument("runs", nargs="+", help="trained run directories")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--nfe", type=int, default=20, help="model calls every solver is matched to")
    ap.add_argument("--taus", default="0.5,0.75,1,1.25", help="temperatures (categorical only)")
    ap.add_argument("--scales", default="1,1.5,2,3", help="guidance scales")
    ap.add_argument("--split", default="test", help="the held-out reference split to choose on")
    ap.add_argument("--choice", default=None, help="report: the sampler_choice.csv to apply")
    ap.add_argument("--num-samples", type=int, default=None, help="default: the run's protocol")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--allow-unfinished", action="store_true")
    args = ap.parse_args(argv)
    args.taus = [float(x) for x in args.taus.split(",")]
    args.scales = [float(x) for x in args.scales.split(",")]
    if args.nfe < 1 or min(args.taus) < 0 or min(args.scales) < 0:
        refuse(
            f"--nfe must be ≥ 1, --taus and --scales ≥ 0 "
            f"(got {args.nfe}, {args.taus}, {args.scales})"
        )
    os.makedirs(args.out, exist_ok=True)
    return choose(args) if args.what == "choose" else report(args)


if __name__ == "__main__":
    main(sys.argv[1:])
