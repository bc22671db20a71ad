"""Fidelity–diversity trade-off of the posterior temperature τ (Purrception, and DFM).

    python analysis/temperature_sweep.py                        # purr + dfm runs, latest sweep
    python analysis/temperature_sweep.py RUN_DIR [RUN_DIR ...] --taus 0.5,0.75,1,1.25,1.5

For each trained run (EMA weights of its last checkpoint) and each τ, samples the run's
evaluation protocol (same labels, noise seed, steps) with softmax(ℓ/τ), scores it against the
same reference, and writes temperature_sweep.{csv,png,pdf} (FD vs τ; precision vs recall
annotated with τ) and a sample grid per run with one row of images per τ.
"""

from __future__ import annotations

import argparse
import glob
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import torch

from analysis.sweeps import (
    check_comparable,
    check_runs,
    latest_sweep,
    output_stems,
    save_figure,
    trained_in,
)
from experiments.runner.build import load_trained
from experiments.runner.evaluation import Evaluator
from experiments.runner.labels import method_label
from methods.records import categorical
from shared.images import pick_by_class, save_grid


def default_runs(sweep: str) -> list[str]:
    """The seed-0 (else lowest-seed) finished run of each categorical objective (dfm,
    dfm-metric, purr: the records' order) in a sweep, by the label in its summary.json (so a
    dfm-mdlm run is not taken for dfm); the runs left out are listed."""
    found = {}
    for run in glob.glob(os.path.join(sweep, "*_seed*")):
        try:
            with open(os.path.join(run, "summary.json")) as f:
                summary = json.load(f)
        except (OSError, ValueError):
            continue
        label = summary.get("method")
        trained = os.path.isfile(os.path.join(run, "checkpoints", "last.pt"))
        if label in categorical() and not (trained and summary.get("status") == "finished"):
            print(f"  left out: {run} ({label}) is {summary.get('status')}, not finished")
        elif label in categorical():
            key = (summary.get("seed", 0), run)
            found[label] = min(found.get(label, key), key)
    if not found:
        raise FileNotFoundError(f"no finished {'/'.join(categorical())} run in {sweep}")
    return [found[m][1] for m in categorical() if m in found]


def sweep_run(run_dir, taus, out_dir, num_samples=None, device="cpu", stem=None) -> pd.DataFrame:
    cfg, tok, method, model = load_trained(run_dir, device)
    if not method.categorical_posterior:
        raise ValueError(f"{run_dir} trains {cfg.method.name}, which has no temperature")
    if num_samples:
        cfg.eval.num_samples = num_samples
    evaluator = Evaluator(cfg, tok, method, torch.device(device), out_dir)
    rows, grid, shown = [], [], None
    for tau in taus:
        images, labels, out = evaluator.sample_images(model, temperature=tau)
        m = evaluator.score(images)
        kind = cfg.eval.extractor
        rows.append(
            {
                "run": os.path.basename(run_dir),
                "method": method_label(cfg),
                "seed": cfg.seed,
                "temperature": tau,
                "nfe": out.nfe,
                "num_samples": cfg.eval.num_samples,
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
        print(
            f"{method_label(cfg)} τ={tau:g}: FD {rows[-1]['fd']:.3f}, precision "
            f"{rows[-1]['precision']:.3f}, recall {rows[-1]['recall']:.3f}"
        )
        # a row per τ: one image for each of at most 16 classes (evenly spaced), same noise
        idx, shown, _ = pick_by_class(labels, max_classes=16, per_class=1)
        grid.append(images[idx])
    stem = stem or method_label(cfg)
    text = {"classes": " ".join(map(str, shown)), "rows": "τ " + " ".join(map(str, taus))}
    path = os.path.join(out_dir, f"temperature_grid_{stem}.png")
    save_grid(torch.cat(grid), path, nrow=len(shown), text=text)
    return pd.DataFrame(rows)


def plot(df: pd.DataFrame, out_dir: str) -> list[str]:
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.3))
    for method, grp in df.groupby("method"):
        grp = grp.sort_values("temperature")
        a.plot(grp["temperature"], grp["fd"], marker="o", label=method)
        b.plot(grp["recall"], grp["precision"], marker="o", label=method)
        for _, r in grp.iterrows():
            b.annotate(
                f"τ={r['temperature']:g}",
                (r["recall"], r["precision"]),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
    extractor = df["extractor"].iloc[0]
    a.set_xlabel("temperature τ")
    a.set_ylabel("FD (in-domain) ↓" if extractor == "fashion" else "FID (Inception) ↓")
    b.set_xlabel("recall (diversity) ↑")
    b.set_ylabel("precision (fidelity) ↑")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    n = sorted(set(df["num_samples"])) if "num_samples" in df else []
    n_text = f", {'/'.join(map(str, n))} samples per τ" if n else ""
    fig.suptitle(
        f"Posterior temperature: fidelity vs diversity (same noise and labels per τ{n_text})",
        fontsize=10,
    )
    fig.tight_layout()
    return save_figure(fig, out_dir, "temperature_sweep")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "runs", nargs="*", help="run directories (default: purr and dfm of the latest sweep)"
    )
    ap.add_argument("--taus", default="0.5,0.75,1.0,1.25,1.5")
    ap.add_argument("--num-samples", type=int, default=None, help="default: the run's protocol")
    ap.add_argument("--out", default=None, help="default: <sweep>/analysis")
    ap.add_argument("--sweep", default=None, help="take the default runs from this sweep")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    ap.add_argument("--allow-unfinished", action="store_true")
    args = ap.parse_args(argv)
    runs = args.runs or default_runs(args.sweep or latest_sweep())

    runs = check_runs(runs, args.allow_unfinished)  # status and identity before any sampling
    stems = output_stems(runs)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    out_dir = args.out or os.path.join(os.path.dirname(os.path.abspath(runs[0])), "analysis")
    os.makedirs(out_dir, exist_ok=True)
    taus = [float(t) for t in args.taus.split(",")]
    df = pd.concat([sweep_run(r, taus, out_dir, args.num_samples, device, stems[r]) for r in runs])
    check_comparable(df, "runs of the temperature sweep")
    df.to_csv(os.path.join(out_dir, "temperature_sweep.csv"), index=False)
    print("wrote " + ", ".join(plot(df, out_dir)))


if __name__ == "__main__":
    main()
