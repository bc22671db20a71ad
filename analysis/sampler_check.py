"""The same trained weights under several samplers, with the in-training protocol.

    python analysis/sampler_check.py RUN_DIR [RUN_DIR ...] --solvers euler,euler-redraw
    python analysis/sampler_check.py RUN_DIR --solvers euler,euler-redraw,maskgit --out DIR

For each run (EMA weights of its last checkpoint) and each solver, samples the run's own
evaluation protocol (the same labels, noise seed, steps, τ and CFG as its metrics.csv rows)
and scores it against the same reference: a row per (run, solver) in sampler_check.csv.
Nothing but the sampler differs between the rows of one run, so this isolates a sampler
change (e.g. masked DFM's carry-over against the official code's redraw) from training.
A solver the method does not have is refused, naming the ones it has.
"""

from __future__ import annotations

import argparse
import os

import pandas as pd
import torch

from analysis.sweeps import trained_in
from experiments.runner.build import load_trained
from experiments.runner.evaluation import Evaluator
from experiments.runner.labels import method_label


def check_run(run_dir: str, solvers: list[str], out_dir: str, device="cpu") -> list[dict]:
    cfg, tok, method, model = load_trained(run_dir, device)
    evaluator = Evaluator(cfg, tok, method, torch.device(device), out_dir)
    rows = []
    for solver in solvers:
        method.check_sampling(solver, cfg.eval.steps, tok.grid)
        cfg.eval.solver = solver  # the evaluator and the label read it
        images, _, out = evaluator.sample_images(model)
        m = evaluator.score(images)
        kind = cfg.eval.extractor
        rows.append(
            {
                "run": os.path.basename(os.path.normpath(run_dir)),
                "seed": cfg.seed,
                "method": method_label(cfg),
                "solver": solver,
                "steps": cfg.eval.steps,
                "nfe": out.nfe,
                "fd": m.get("fd_fashion", m.get("fid_inception")),
                "kid": m.get(f"kid_{kind}"),
                "precision": m.get(f"precision_{kind}"),
                "recall": m.get(f"recall_{kind}"),
                "extractor": kind,
                **evaluator.identity,
                "train_precision": trained_in(run_dir),
                "eval_precision": evaluator.precision,
            }
        )
        r = rows[-1]
        print(
            f"{r['run']} {solver}: FD {r['fd']:.3f}, precision {r['precision']:.3f}, "
            f"recall {r['recall']:.3f}"
        )
    return rows


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("runs", nargs="+", help="trained run directories")
    ap.add_argument("--solvers", default="euler,euler-redraw")
    ap.add_argument("--out", default=None, help="default: <first run's sweep>/analysis")
    args = ap.parse_args(argv)
    solvers = [s.strip() for s in args.solvers.split(",") if s.strip()]
    out_dir = args.out or os.path.join(os.path.dirname(os.path.abspath(args.runs[0])), "analysis")
    os.makedirs(out_dir, exist_ok=True)
    rows = []
    for run in args.runs:
        try:
            rows += check_run(run, solvers, out_dir)
        except ValueError as e:
            raise SystemExit(f"error: {run}: {e}") from None
    df = pd.DataFrame(rows)
    path = os.path.join(out_dir, "sampler_check.csv")
    df.to_csv(path, index=False)
    print(f"wrote {path}")
    return df


if __name__ == "__main__":
    main()
