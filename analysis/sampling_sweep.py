"""The same trained weights sampled under many settings of their evaluation protocol: the
engine of ``nfe_sweep.py`` (solver × steps or tolerance) and ``guidance_sweep.py`` (CFG scale).

Every point samples the run's own protocol (its labels, noise seed ``eval.seed``, batch size
and evaluation precision, EMA weights of the last checkpoint) with one setting changed, and
scores it against the run's reference. A point is one CSV row, written atomically as soon as
it is done, keyed by what produced it: the run folder, its checkpoint's sha256 and the
setting, including the number of samples it was scored at. A relaunch with the same output
folder skips the points it has (a retrained run has another checkpoint, so its points are
recomputed), so a killed sweep loses at most one point. A figure reads only the rows of each
run's current checkpoint at the sweep's sample count, and refuses two rows for one point.

Rows carry the run's ``train_identity`` (a digest of its training config, seed excluded):
runs are grouped by it, never by label alone, and two runs with one identity and one seed
are refused (``check_runs``).
"""

from __future__ import annotations

import math
import os
import time

import pandas as pd
import torch

from analysis.sweeps import (
    NotComparableError,
    check_comparable,
    check_runs,
    read_table,
    trained_in,
)
from experiments.runner.checkpoint import training_identity
from experiments.runner.labels import method_label
from shared.io import atomic_write_text, file_sha256

# a point's setting: every key a sampler takes from the protocol that a sweep may change, and
# how it is scored: the reference split (the held-out split a sampler is chosen on:
# analysis/sampler_choice.py) and the feature extractor (fd_fashion or Inception:
# analysis/metric_agreement.py)
SETTING = (
    "solver",
    "steps",
    "tolerance",
    "temperature",
    "cfg_scale",
    "num_samples",
    "reference_split",
    "extractor",
)
# settings added after sweep CSVs were written: left out of a point's key when the point keeps
# the run's own, so that the keys of older rows still match
LATER = ("reference_split", "extractor")


def run_key(run_dir: str, csv_path: str) -> str:
    """A run's key in a sweep CSV: its folder relative to the CSV's, so that a committed CSV
    names no path of the machine that ran it and still finds its runs when moved with them."""
    return os.path.relpath(os.path.abspath(run_dir), os.path.dirname(os.path.abspath(csv_path)))


def current_rows(rows: list[dict], measured: dict) -> list[dict]:
    """The rows that measure these runs as they are now (``measured``: run key → (checkpoint
    sha256, sample count), as ``sweep_run`` found them): each run's current checkpoint (a
    retrained run's old rows stay in the file, unused) at this sweep's sample count (a rerun
    with more samples replaces the points, it is not averaged with them)."""
    return [
        r
        for r in rows
        if r["path"] in measured
        and (r["checkpoint_sha256"], int(r["num_samples"])) == measured[r["path"]]
    ]


def check_one_measurement(df: pd.DataFrame) -> None:
    """Refuse two rows of one run at one setting (another checkpoint, or another sample
    count): a figure draws one measurement per point and never averages two, naming both."""
    keys = ["path", *(k for k in SETTING if k != "num_samples" and k in df)]
    dup = df[df[keys].astype("string").fillna("protocol").duplicated(keep=False)]
    if dup.empty:
        return
    lines = "\n  ".join(
        f"{r['run']} {r['solver']} steps={r['steps']} cfg={r['cfg_scale']}: checkpoint "
        f"{r['checkpoint_sha256']}, n={r['num_samples']}, fd={r['fd']:.3f}"
        for _, r in dup.iterrows()
    )
    raise NotComparableError(
        f"these rows measure one run at one setting more than once, and a point is one "
        f"measurement:\n  {lines}\nKeep the rows of one checkpoint and one sample count."
    )


def setting_key(point: dict) -> str:
    """A point's key in a sweep CSV (``LATER`` settings only where the point sets them)."""
    return "|".join(
        f"{k}={point.get(k)}" for k in SETTING if k not in LATER or point.get(k) is not None
    )


def load_done(csv_path: str) -> pd.DataFrame:
    if not os.path.isfile(csv_path):
        return pd.DataFrame()
    return read_table(csv_path)


def save_rows(csv_path: str, rows: list[dict]) -> None:
    atomic_write_text(csv_path, pd.DataFrame(rows).to_csv(index=False))


def sweep_run(
    run_dir: str,
    points_for,
    csv_path: str,
    rows: list[dict],
    device: str = "cpu",
    num_samples: int | None = None,
    measured: dict | None = None,
) -> list[dict]:
    """Sample ``run_dir`` at every point of ``points_for(cfg, tokenizer)`` (dicts of SETTING
    keys; missing keys keep the run's protocol), appending a row per point to ``rows`` and
    rewriting ``csv_path`` after each. Rows already in ``rows`` for this run folder and
    checkpoint are kept, not recomputed."""
    from experiments.runner.build import load_trained
    from experiments.runner.evaluation import Evaluator

    path = run_key(run_dir, csv_path)
    ck_sha = file_sha256(os.path.join(run_dir, "checkpoints", "last.pt"))[:16]
    have = {r["setting"] for r in rows if r["path"] == path and r["checkpoint_sha256"] == ck_sha}
    cfg, tok, method, model, ck = load_trained(run_dir, device, with_checkpoint=True)
    n = num_samples or int(cfg.eval.num_samples)
    if measured is not None:  # what this sweep measures the run as (see current_rows)
        measured[path] = (ck_sha, n)
    points = points_for(cfg, tok)
    todo = []
    for point in points:  # the key names the sample count a point is measured at, resolved
        full = {"num_samples": n, **point}
        if setting_key(full) not in have:
            todo.append(full)
    if not todo:
        print(f"{run_dir}: all {len(points)} points done")
        return rows
    base = {k: cfg.eval[k] for k in ("solver", "steps", "temperature", "cfg_scale", *LATER)}
    base["num_samples"] = cfg.eval.num_samples
    out_dir = os.path.dirname(csv_path)
    evaluators = {}  # one per (split, extractor): its reference statistics are read once
    for full in todo:
        setting = {**base, **{k: v for k, v in full.items() if v is not None}}
        adaptive = setting["solver"] in method.adaptive_solvers
        if setting["solver"] in method.solvers:
            method.check_sampling(setting["solver"], setting["steps"], tok.grid)
        elif not adaptive:
            raise SystemExit(
                f"error: {run_dir}: {cfg.method.name} has no solver {setting['solver']!r}"
            )
        cfg.eval.solver = setting["solver"]
        cfg.eval.steps = setting["steps"]
        cfg.eval.num_samples = setting["num_samples"]
        cfg.eval.reference_split = setting["reference_split"]
        cfg.eval.extractor = setting["extractor"]
        scoring = (setting["reference_split"], setting["extractor"])
        if scoring not in evaluators:
            evaluators[scoring] = Evaluator(cfg, tok, method, torch.device(device), out_dir)
        evaluator = evaluators[scoring]
        kw = {"tolerance": float(setting["tolerance"])} if adaptive else {}
        if adaptive:  # the grid's steps mean nothing to it: its row says so
            setting["steps"] = None
        else:
            setting["tolerance"] = None
        t0 = time.time()
        images, _, _ = evaluator.sample_images(
            model, temperature=setting["temperature"], cfg_scale=setting["cfg_scale"], **kw
        )
        sample_s = time.time() - t0
        m = evaluator.score(images)
        kind = cfg.eval.extractor
        n = sum(b for b, _, _ in evaluator.batch_nfe)
        row = {
            "run": os.path.join(*os.path.normpath(run_dir).split(os.sep)[-2:]),
            "path": path,
            "method": method_label(cfg, sampler=False),
            "seed": cfg.seed,
            "train_identity": training_identity(ck["config"]),
            "checkpoint_sha256": ck_sha,
            "step": ck["progress"]["step"],
            "setting": setting_key(full),
            **{k: setting.get(k) for k in SETTING},
            # model calls per image batch, averaged over images (an adaptive solver's differ)
            "nfe": sum(b * f for b, f, _ in evaluator.batch_nfe) / n,
            "nfe_rows": sum(b * r for b, _, r in evaluator.batch_nfe) / n,
            "nfe_min": min(f for _, f, _ in evaluator.batch_nfe),
            "nfe_max": max(f for _, f, _ in evaluator.batch_nfe),
            "batch_size": cfg.eval.batch_size,
            "sample_s": round(sample_s, 2),
            "fd": m.get("fd_fashion", m.get("fid_inception")),
            "kid": m.get(f"kid_{kind}"),
            "precision": m.get(f"precision_{kind}"),
            "recall": m.get(f"recall_{kind}"),
            "extractor": kind,
            **evaluator.identity,
            "train_precision": trained_in(run_dir),
            "eval_precision": evaluator.precision,
        }
        rows.append(row)
        save_rows(csv_path, rows)
        budget = f"tol {setting['tolerance']:g}" if adaptive else f"steps {setting['steps']}"
        print(
            f"{row['run']} {row['method']} {setting['solver']} {budget} "
            f"cfg {setting['cfg_scale']:g}: NFE {row['nfe']:.1f}, FD {row['fd']:.3f}, "
            f"precision {row['precision']:.3f}, recall {row['recall']:.3f} "
            f"({sample_s:.0f} s)"
        )
    return rows


def add_run_args(ap) -> None:
    """The arguments every sweep script takes besides its own settings."""
    ap.add_argument("runs", nargs="+", help="trained run directories")
    ap.add_argument("--num-samples", type=int, default=None, help="default: the run's protocol")
    ap.add_argument("--out", default=None, help="default: <first run's sweep>/analysis")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--allow-unfinished", action="store_true")


def sweep_cli(args, stem: str, points_for, plot) -> pd.DataFrame:
    """A sweep script's work once its own arguments are checked: the runs checked, every point
    sampled (resuming from ``<out>/<stem>.csv``), the figure drawn by ``plot(df, out_dir)``."""
    runs = check_runs(args.runs, args.allow_unfinished)
    out_dir = args.out or os.path.join(os.path.dirname(os.path.abspath(runs[0])), "analysis")
    os.makedirs(out_dir, exist_ok=True)
    csv_path = os.path.join(out_dir, f"{stem}.csv")
    df = run_all(runs, points_for, csv_path, args.device, args.num_samples)
    print(f"wrote {csv_path}; " + ", ".join(plot(df, out_dir)))
    return df


def run_all(run_dirs, points_for, csv_path, device="cpu", num_samples=None) -> pd.DataFrame:
    """Every run at its points (``points_for(cfg, tokenizer)`` → list), resuming from
    ``csv_path``; returns the rows of these runs only (others in the file are kept)."""
    done = load_done(csv_path)
    rows = done.to_dict("records")
    for r in rows:  # NaN from the CSV means "the run's protocol"; a point's key says None
        for k in SETTING:
            if isinstance(r.get(k), float) and math.isnan(r[k]):
                r[k] = None
    measured: dict = {}
    for run in run_dirs:
        rows = sweep_run(run, points_for, csv_path, rows, device, num_samples, measured)
    df = pd.DataFrame(current_rows(rows, measured))
    check_comparable(df, "runs of this sweep")
    check_one_measurement(df)
    return df


def curve_groups(df: pd.DataFrame):
    """(label, rows) per trained config: the method label, plus the identity digest when one
    label covers several configs (e.g. two beta_scale values of dfm-metric)."""
    labels = df.groupby("method")["train_identity"].nunique()
    for (method, ident), grp in df.groupby(["method", "train_identity"], sort=True):
        name = method if labels[method] == 1 else f"{method} [{ident[:6]}]"
        yield name, grp


__all__ = [
    "add_run_args",
    "check_one_measurement",
    "curve_groups",
    "run_all",
    "sweep_cli",
    "SETTING",
]
