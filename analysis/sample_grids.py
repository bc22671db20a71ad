"""Sample grids of every method at each evaluation point, side by side (from saved grids).

    python analysis/sample_grids.py [SWEEP] [--seed 0] [--out DIR]

Reads ``samples/step_*.png`` that the runner saved at each evaluation (same labels and noise
for every method and step) and lays them out as one figure: a row per method, a column per
evaluation, titled with the step and the run's FD/FID at that step.
"""

from __future__ import annotations

import argparse
import glob
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from PIL import Image

from analysis.sweeps import add_sweep_arguments, open_sweeps


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_sweep_arguments(ap)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    sweeps = open_sweeps(args, need_rows=False)
    sweep, metric, out_dir = sweeps.dirs[0], sweeps.metric, sweeps.out_dir
    metrics, runs = sweeps.metrics, sweeps.runs
    runs = runs[runs["seed"] == args.seed].sort_values("method")
    if runs.empty:
        raise SystemExit(f"no runs with seed {args.seed} in {sweep}")
    cells = {}
    for _, r in runs.iterrows():
        grids = sorted(glob.glob(os.path.join(r["path"], "samples", "step_*.png")))
        cells[r["method"]] = grids
    cols = max(len(g) for g in cells.values())
    fig, axes = plt.subplots(
        len(cells), max(cols, 1), figsize=(3.2 * max(cols, 1), 3.4 * len(cells)), squeeze=False
    )
    for i, (method, grids) in enumerate(cells.items()):
        for j in range(cols):
            ax = axes[i, j]
            ax.axis("off")
            if j >= len(grids):
                continue
            step = int(os.path.basename(grids[j])[5:-4])
            ax.imshow(Image.open(grids[j]), cmap="gray")
            row = (
                metrics[
                    (metrics["method"] == method)
                    & (metrics["seed"] == args.seed)
                    & (metrics["step"] == step)
                ]
                if metric
                else []
            )
            score = f", {metric} {row[metric].iloc[0]:.1f}" if len(row) else ""
            ax.set_title(f"{method} step {step}{score}", fontsize=8)
    fig.suptitle(
        f"{os.path.basename(os.path.normpath(sweep))}: samples at each evaluation "
        f"(seed {args.seed}; one class per row, same noise everywhere)",
        fontsize=9,
    )
    fig.tight_layout()
    path = os.path.join(out_dir, "sample_grids.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
