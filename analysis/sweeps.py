"""Reading finished (or partial) sweeps: every analysis script starts here.

A sweep directory holds one sub-directory per run, each with ``metrics.csv`` (one row per
evaluation) and ``summary.json`` (status: running | finished | failed | interrupted).
Nothing else is needed.
"""

from __future__ import annotations

import glob
import json
import os

import pandas as pd

SWEEPS_ROOT = "outputs/sweeps"


def latest_sweep(root: str = SWEEPS_ROOT) -> str:
    candidates = [d for d in glob.glob(os.path.join(root, "*")) if os.path.isdir(d)]
    candidates = [d for d in candidates if glob.glob(os.path.join(d, "*", "summary.json"))]
    if not candidates:
        raise FileNotFoundError(
            f"no sweep with runs under {root}; run `python experiments/run.py -m "
            "method=cfm,dfm,purr` first or pass a sweep directory"
        )
    return max(candidates, key=os.path.getmtime)


def load_sweep(sweep_dir) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(metrics: one row per evaluation of every run, runs: one row per run directory).

    ``sweep_dir`` may be a list of sweep folders (e.g. the main sweep and a sampler variant's
    sweep); their runs are then named ``<sweep>/<run>``, and must be comparable."""
    dirs = [sweep_dir] if isinstance(sweep_dir, str) else list(sweep_dir)
    runs, frames = [], []
    for run_dir in sorted(r for d in dirs for r in glob.glob(os.path.join(d, "*"))):
        summary_path = os.path.join(run_dir, "summary.json")
        if not os.path.isfile(summary_path):
            continue
        try:
            with open(summary_path) as f:
                summary = json.load(f)
        except json.JSONDecodeError:
            summary = {"status": "unreadable"}
        metrics_path = os.path.join(run_dir, "metrics.csv")
        n_rows = 0
        if os.path.isfile(metrics_path):
            df = pd.read_csv(metrics_path)
            if len(df):
                fill_legacy_precisions(df, summary)
                df["run"] = run_name(run_dir, len(dirs))
                frames.append(df)
                n_rows = len(df)
        runs.append({
            "run": run_name(run_dir, len(dirs)), "path": run_dir, "method": summary.get("method"),
            "seed": summary.get("seed"), "status": summary.get("status", "unknown"),
            "evaluations": n_rows, "total_steps": summary.get("total_steps"),
            "train_flops_per_step": summary.get("train_flops_per_step"),
            "params": summary.get("params"), "error": summary.get("error"),
        })  # fmt: skip
    if not runs:
        raise FileNotFoundError(f"{', '.join(dirs)} hold no run directories with summary.json")
    metrics = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    check_comparable(metrics)
    runs = pd.DataFrame(runs)
    check_distinct(runs)
    return metrics, runs


def check_distinct(runs: pd.DataFrame) -> None:
    """Refuse two runs with the same method label and seed: every analysis averages over
    seeds per label, so they would be drawn as one run (a sweep passed twice, seed=0,0, or two
    runs that differ only in an option the label does not name, e.g. method.beta_scale)."""
    known = runs.dropna(subset=["method", "seed"])
    dup = known[known.duplicated(["method", "seed"], keep=False)]
    if dup.empty:
        return
    lines = "\n  ".join(
        f"{m} seed {s}: {', '.join(sorted(map(str, grp['run'])))}"
        for (m, s), grp in dup.groupby(["method", "seed"])
    )
    raise NotComparableError(
        f"these runs share a method label and a seed, so they would be averaged as one:\n"
        f"  {lines}\nPass each sweep once, and draw runs that differ in an option the label "
        "does not name (e.g. method.beta_scale, method.mdlm_eps) in separate calls."
    )


def run_name(run_dir: str, num_sweeps: int) -> str:
    parts = os.path.normpath(run_dir).split(os.sep)
    return parts[-1] if num_sweeps == 1 else "/".join(parts[-2:])


# what produced a results row; rows that differ in any of these are not comparable (bf16 and
# fp32 runs are two experiments: compare them explicitly, never average them as one)
IDENTITY = ("tokenizer_sha256", "metric_net_sha256", "reference_sha256", "extractor",
            "train_precision", "eval_precision")  # fmt: skip


def recorded_train_precision(summary: dict) -> str:
    """A run's training precision from its summary.json; runs from before it was recorded get
    what the default setting meant then (shared/precision.py: bf16 on CUDA, fp32 on CPU)."""
    from shared.precision import legacy_train_precision

    device = "cuda" if "cuda" in str(summary.get("device", "")) else "cpu"
    return summary.get("train_precision") or legacy_train_precision("auto", device)


def fill_legacy_precisions(df: pd.DataFrame, summary: dict) -> None:
    """Rows written before the precisions were recorded (a whole old run, or the old rows of a
    run resumed since): the run's recorded training precision if it has one, else what that
    code did with the default setting (bf16 autocast in training on CUDA, fp32 on CPU);
    sampling was always fp32."""
    old_train = recorded_train_precision(summary)
    for col, legacy in (("train_precision", old_train), ("eval_precision", "fp32")):
        df[col] = df[col].fillna(legacy) if col in df else legacy


class NotComparableError(ValueError):
    pass


def check_comparable(metrics: pd.DataFrame, what: str = "runs") -> None:
    """Refuse, naming the runs of each group, when rows were produced by different
    tokenizers, metric networks or reference sets (or some recorded it and some did not)."""
    cols = [c for c in IDENTITY if c in metrics]
    if metrics.empty or not cols:
        return
    ident = metrics[cols].astype("string").fillna("unrecorded").agg(" ".join, axis=1)
    groups = metrics.assign(_identity=ident).groupby("_identity")["run"].unique()
    if len(groups) > 1:
        lines = "\n  ".join(
            f"{', '.join(cols)} = {key}: {', '.join(sorted(map(str, grp)))}"
            for key, grp in groups.items()
        )
        raise NotComparableError(
            f"these {what} were measured differently and cannot be drawn in one comparison:\n"
            f"  {lines}\nPlot each group on its own (or rerun with the shipped tokenizer and "
            "metric network)."
        )


def headline_metric(metrics: pd.DataFrame) -> str:
    """fid_inception when a sweep has it, else the in-domain fd_fashion."""
    for col in ("fid_inception", "fd_fashion"):
        if col in metrics and metrics[col].notna().any():
            return col
    raise ValueError("no FID/FD column with values in this sweep")


def status_labels(runs: pd.DataFrame) -> dict[str, str]:
    """method → 'purr (3 finished)' or 'dfm (2 finished, 1 failed)'."""
    out = {}
    for method, grp in runs.groupby("method"):
        counts = grp["status"].value_counts()
        parts = [f"{n} {s}" for s, n in counts.items()]
        out[method] = f"{method} ({', '.join(parts)})"
    return out


def save_figure(fig, out_dir: str, stem: str, exts=("png", "pdf")) -> list[str]:
    """Write ``fig`` as <out_dir>/<stem>.<ext> for each format, close it, return the paths."""
    import matplotlib.pyplot as plt  # callers choose the backend before importing pyplot

    paths = [os.path.join(out_dir, f"{stem}.{ext}") for ext in exts]
    for p in paths:
        fig.savefig(p, dpi=130)
    plt.close(fig)
    return paths
