"""Per-position posterior entropy along sampling, for Purrception and DFM.

    python analysis/entropy_maps.py                    # purr + dfm runs of the latest sweep
    python analysis/entropy_maps.py RUN_DIR [RUN_DIR ...] --samples 3 --times 6
    python analysis/entropy_maps.py --sweep outputs/gpu_sweep/sweep --device auto

From ``sample(..., trace=True)`` the categorical posterior π_t (B, K, H, W) at every step
gives the entropy H_t = −Σ_k π_k log π_k (nats) of each latent position. For each run,
entropy_maps_<method>.png shows, at several times t, the image decoded from the posterior's
argmax (the model's current guess) above the entropy heatmap of the latent grid; all maps
share one colour scale [0, log K]. entropy_vs_t.{png,pdf,csv} has the mean entropy against t
per method.
"""

from __future__ import annotations

import argparse
import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from analysis.sweeps import check_runs, latest_sweep, output_stems, save_figure
from analysis.temperature_sweep import default_runs
from experiments.runner.build import load_trained


def entropy(post: torch.Tensor) -> torch.Tensor:
    """(B, K, H, W) probabilities → (B, H, W) entropy in nats (0·log 0 = 0)."""
    return -(post * post.clamp_min(1e-30).log()).sum(1)


@torch.no_grad()
def trace_run(
    run_dir: str,
    n: int,
    seed: int = 0,
    device: str = "cpu",
    steps: int | None = None,
    n_times: int = 6,
):
    """Sample ``n`` images of a run with its sampler (``steps``: its eval.steps unless given),
    keeping per step only the entropy map and the argmax codes (B, H, W) — never the
    (B, K, H, W) posteriors, which at K = 16384 are about 86 MB per step per sample."""
    cfg, tok, method, model = load_trained(run_dir, device)
    if not method.categorical_posterior:
        raise ValueError(f"{run_dir} trains {cfg.method.name}: no categorical posterior")
    y = (torch.arange(n) % cfg.data.num_classes).to(device)
    g = torch.Generator(device).manual_seed(seed)
    times, ents, argmaxes = [], [], []

    def summarise(record):  # called by the sampler at every step
        if record["posterior"] is not None:
            times.append(record["t"])
            ents.append(entropy(record["posterior"]).cpu())
            argmaxes.append(record["posterior"].argmax(1))

    out = method.sample(
        model,
        n,
        tok.grid,
        steps or cfg.eval.steps,
        y=y,
        solver=cfg.eval.solver,
        generator=g,
        trace=summarise,
    )
    ent = torch.stack(ents)  # (T, B, H, W)
    # the argmax images, decoded only at the times plot_maps shows
    guesses = {int(s): tok.decode(argmaxes[s]).cpu() for s in shown_steps(len(times), n_times)}
    final = tok.decode(out.indices).cpu()
    return cfg, method.num_codes, times, ent, guesses, final


def shown_steps(n_steps: int, n_times: int) -> np.ndarray:
    return np.unique(np.linspace(0, n_steps - 1, n_times).round().astype(int))


def plot_maps(method, k, times, ent, guesses, final, n_times, out_path):
    sel = shown_steps(len(times), n_times)
    b = ent.shape[1]
    fig, axes = plt.subplots(
        2 * b, len(sel) + 1, figsize=(1.7 * (len(sel) + 1), 1.75 * 2 * b), squeeze=False
    )
    vmax = math.log(k)
    im = None
    for i in range(b):
        for j, s in enumerate(sel):
            top, bottom = axes[2 * i, j], axes[2 * i + 1, j]
            top.imshow(
                guesses[s][i].permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=255
            )
            im = bottom.imshow(ent[s, i].numpy(), cmap="magma", vmin=0, vmax=vmax)
            if i == 0:
                top.set_title(f"t={times[s]:.2f}", fontsize=8)
            bottom.set_xlabel(f"H̄={ent[s, i].mean():.2f}", fontsize=7)
        axes[2 * i, -1].imshow(
            final[i].permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=255
        )
        if i == 0:
            axes[0, -1].set_title("sample", fontsize=8)
        axes[2 * i + 1, -1].axis("off")
        axes[2 * i, 0].set_ylabel("argmax π_t", fontsize=7)
        axes[2 * i + 1, 0].set_ylabel("entropy", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes[:, :-1], fraction=0.02, pad=0.01, label=f"nats (max log K={vmax:.2f})")
    fig.suptitle(f"{method}: posterior entropy per latent position along sampling", fontsize=9)
    fig.savefig(out_path, dpi=130, bbox_inches="tight")
    plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("runs", nargs="*", help="run directories (default: purr and dfm, latest sweep)")
    ap.add_argument("--samples", type=int, default=3)
    ap.add_argument("--steps", type=int, default=None, help="sampling steps (default: the run's)")
    ap.add_argument("--times", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--sweep", default=None, help="take the default runs from this sweep")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    ap.add_argument("--allow-unfinished", action="store_true")
    args = ap.parse_args(argv)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    runs = args.runs or default_runs(args.sweep or latest_sweep())

    runs = check_runs(runs, args.allow_unfinished)  # status and identity before any sampling
    stems = output_stems(runs)
    out_dir = args.out or os.path.join(os.path.dirname(os.path.abspath(runs[0])), "analysis")
    os.makedirs(out_dir, exist_ok=True)
    curves, written = [], []
    for run in runs:
        cfg, k, times, ent, guesses, final = trace_run(
            run, args.samples, args.seed, device, args.steps, args.times
        )
        name = stems[run]  # the label, with the seed where runs share it
        path = os.path.join(out_dir, f"entropy_maps_{stems[run]}.png")
        plot_maps(name, k, times, ent, guesses, final, args.times, path)
        written.append(path)
        mean = ent.flatten(1).mean(1).numpy()
        curves.append(
            pd.DataFrame(
                {
                    "method": name,
                    "run": os.path.basename(run),
                    "t": times,
                    "mean_entropy": mean,
                    "log_k": math.log(k),
                }
            )
        )
    df = pd.concat(curves)
    df.to_csv(os.path.join(out_dir, "entropy_vs_t.csv"), index=False)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, grp in df.groupby("method"):
        ax.plot(grp["t"], grp["mean_entropy"], marker=".", label=name)
    ax.axhline(df["log_k"].iloc[0], color="gray", ls="--", lw=0.8, label="log K (uniform)")
    ax.set_xlabel("t (0 = noise, 1 = data)")
    ax.set_ylabel("mean posterior entropy (nats)")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Posterior entropy along sampling", fontsize=10)
    fig.tight_layout()
    written += save_figure(fig, out_dir, "entropy_vs_t")
    print("wrote " + ", ".join(written))


if __name__ == "__main__":
    main()
