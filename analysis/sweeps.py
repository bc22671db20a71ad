"""Reading finished (or partial) sweeps: every analysis script starts here.

A sweep directory holds one sub-directory per run, each with ``metrics.csv`` (one row per
evaluation) and ``summary.json`` (status: running | finished | failed | interrupted).
Nothing else is needed.

Every run's metrics.csv is checked as it is read (``experiments/runner/metrics_file.py``):
each row whole, no step twice, and the rows against the evaluations its summary.json plans
(a finished run has all of them). A file that fails is refused, naming it and its repair; a
run left out of what a command draws or tabulates is named on stderr, with why.
"""

from __future__ import annotations

import glob
import json
import os
import shlex
import sys
from dataclasses import dataclass

import pandas as pd

from experiments.runner.metrics_file import MetricsFileError, verify_against_summary, verify_rows
from shared.refusal import refuse

SWEEPS_ROOT = "outputs/sweeps"
# hex digests in CSVs: read as text, or pandas parses one like "8e12…" (or all digits) as a
# number, and rows of one identity stop comparing equal (a flake: digests vary with paths)
DIGEST_COLUMNS = (
    "train_identity",
    "checkpoint_sha256",
    "tokenizer_sha256",
    "metric_net_sha256",
    "reference_sha256",
)


def read_table(path: str) -> pd.DataFrame:
    """A CSV of this project (metrics.csv, a sweep CSV), its digest columns as text."""
    return pd.read_csv(path, dtype=dict.fromkeys(DIGEST_COLUMNS, str))


def latest_sweep(root: str = SWEEPS_ROOT) -> str:
    candidates = [d for d in glob.glob(os.path.join(root, "*")) if os.path.isdir(d)]
    candidates = [d for d in candidates if glob.glob(os.path.join(d, "*", "summary.json"))]
    if not candidates:
        raise FileNotFoundError(
            f"no sweep with runs under {root}; run `python experiments/run.py -m "
            "method=cfm,dfm,purr` first or pass a sweep directory"
        )
    return max(candidates, key=os.path.getmtime)


def add_sweep_arguments(ap) -> None:
    """The arguments every sweep-reading command takes: the sweep folders (default: the latest
    under outputs/sweeps) and ``--out`` (default: ``<first sweep>/analysis``)."""
    ap.add_argument("sweeps", nargs="*", help="sweep folders, read together (default: the latest)")
    ap.add_argument("--out", default=None, help="output folder (default: <sweep>/analysis)")


@dataclass
class Sweeps:
    """The sweeps a command reads: their folders, their rows (``load_sweep``), the folder its
    outputs go to (created) and the headline metric."""

    dirs: list[str]
    metrics: pd.DataFrame
    runs: pd.DataFrame
    out_dir: str
    metric: str | None


def open_sweeps(args, metric: str | None = None, need_rows: bool = True) -> Sweeps:
    """The start of every sweep-reading command, from ``add_sweep_arguments``' ``args``.
    Exits with a message naming the sweep when ``need_rows`` and no run has an evaluation."""
    dirs = args.sweeps or [latest_sweep()]
    metrics, runs = read_sweep(dirs)
    if metrics.empty and need_rows:
        raise SystemExit(f"no evaluation rows yet in {' + '.join(dirs)}: nothing to analyse")
    if not metrics.empty:
        metric = metric or headline_metric(metrics)
    out_dir = args.out or os.path.join(dirs[0], "analysis")
    os.makedirs(out_dir, exist_ok=True)
    return Sweeps(dirs, metrics, runs, out_dir, metric)


def read_sweep(sweep_dir) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``load_sweep`` for a command: a metrics.csv that fails its check ends the command with
    its one line (exit status 2)."""
    try:
        return load_sweep(sweep_dir)
    except MetricsFileError as e:
        refuse(str(e))


def load_sweep(sweep_dir, quiet: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(metrics: one row per evaluation of every run, runs: one row per run directory).

    ``sweep_dir`` may be a list of sweep folders (e.g. the main sweep and a sampler variant's
    sweep); their runs are then named ``<sweep>/<run>``, and must be comparable. Each run's
    metrics.csv is verified (:func:`verified_rows`; a damaged one raises MetricsFileError);
    a run that adds no rows is named on stderr, one line each, unless ``quiet``."""
    dirs = [sweep_dir] if isinstance(sweep_dir, str) else list(sweep_dir)
    runs, frames = [], []
    for run_dir in sorted(r for d in dirs for r in glob.glob(os.path.join(d, "*"))):
        name = run_name(run_dir, len(dirs))
        summary_path = os.path.join(run_dir, "summary.json")
        if not os.path.isfile(summary_path):
            if not quiet and os.path.isfile(os.path.join(run_dir, "metrics.csv")):
                print(
                    f"left out: {name} has metrics.csv but no summary.json, so its rows cannot "
                    "be checked against its plan; restore summary.json from a copy, or relaunch "
                    f"the run's own command into its folder ({relaunch_command(run_dir)})",
                    file=sys.stderr,
                )
            continue
        summary, unreadable = read_summary(summary_path)
        metrics_path = os.path.join(run_dir, "metrics.csv")
        n_rows = 0
        if unreadable:
            if not quiet:
                print(
                    f"left out: {name}: {summary_path} is unreadable ({unreadable}), so its "
                    "rows cannot be checked against its plan; restore it from a copy, or "
                    f"relaunch the run's own command into its folder ({relaunch_command(run_dir)})",
                    file=sys.stderr,
                )
        elif verified_rows(run_dir, summary):
            df = read_table(metrics_path)
            fill_legacy_precisions(df, summary)
            df["run"] = name
            frames.append(df)
            n_rows = len(df)
        elif not quiet:
            err = f" ({summary['error']})" if isinstance(summary.get("error"), str) else ""
            print(
                f"left out: {name} ({summary.get('method')} seed {summary.get('seed')}) is "
                f"{summary.get('status', 'unknown')}{err}, with no evaluation rows",
                file=sys.stderr,
            )
        identity, config = recorded_training(run_dir, summary)
        runs.append(
            {
                "run": name,
                "path": run_dir,
                "method": summary.get("method"),
                "train_identity": identity,
                "train_config": config,
                "seed": summary.get("seed"),
                "status": summary.get("status", "unknown"),
                "evaluations": n_rows,
                "total_steps": summary.get("total_steps"),
                "train_flops_per_step": summary.get("train_flops_per_step"),
                "params": summary.get("params"),
                "error": summary.get("error"),
                "backbone": summary.get("backbone"),
                "budget_train_flops": summary.get("budget_train_flops"),
                "budget_images": summary.get("budget_images"),
            }
        )
    if not runs:
        raise FileNotFoundError(f"{', '.join(dirs)} hold no run directories with summary.json")
    metrics = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    check_comparable(metrics)
    runs = pd.DataFrame(runs)
    check_distinct(runs)
    return name_series(metrics, runs), runs


def read_summary(path: str) -> tuple[dict, str | None]:
    """(summary.json's contents, None), or ({'status': 'unreadable'}, why) when it is not a
    JSON object."""
    try:
        with open(path) as f:
            summary = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return {"status": "unreadable"}, f"{type(e).__name__}: {e}"
    if not isinstance(summary, dict):
        return {"status": "unreadable"}, f"a JSON {type(summary).__name__}, not an object"
    return summary, None


def relaunch_command(run_dir: str) -> str:
    """The command that relaunches a run into its folder, from the overrides it was launched
    with (``.hydra/overrides.yaml``); where they are unreadable, where they would be."""
    overrides = os.path.join(run_dir, ".hydra", "overrides.yaml")
    job = f"<the overrides in {overrides}>"
    try:
        import yaml

        with open(overrides) as f:
            given = [str(o) for o in yaml.safe_load(f) or []]
        job = " ".join(shlex.quote(o) for o in given if not o.startswith("hydra."))
    except (OSError, ValueError, TypeError, ImportError):
        pass
    return f"python experiments/run.py {job} hydra.run.dir={shlex.quote(run_dir)}"


def metrics_repair(run_dir: str) -> str:
    """What repairs a run's metrics.csv: the run's own command relaunched into its folder
    (the runner rewrites the file from the rows its checkpoint keeps), or a copy."""
    return (
        f"relaunch the run's own command into its folder ({relaunch_command(run_dir)}), which "
        "rewrites metrics.csv from the run's checkpoint, or restore the file from a copy"
    )


def verified_rows(run_dir: str, summary: dict) -> list[dict]:
    """The rows of ``run_dir``'s metrics.csv (none if absent) once each is whole, no step is
    there twice, and they are the evaluations ``summary`` plans (all of them when finished);
    else MetricsFileError, one line naming the file and :func:`metrics_repair`."""
    path = os.path.join(run_dir, "metrics.csv")
    repair = metrics_repair(run_dir)
    rows = verify_rows(path, repair)
    verify_against_summary(path, rows, summary, repair)
    return rows


def left_out_unfinished(
    metrics: pd.DataFrame, runs: pd.DataFrame, what: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows, runs) of the finished runs alone. Each other run that has rows is named on
    stderr, one line each, with its status and error; ``what`` says what it is left out of
    (a run without rows was named by :func:`load_sweep` already)."""
    finished = runs[runs["status"] == "finished"]
    drawn = set(metrics["run"]) if not metrics.empty else set()
    for _, r in runs[(runs["status"] != "finished") & runs["run"].isin(drawn)].iterrows():
        err = f" ({r['error']})" if isinstance(r["error"], str) else ""
        print(
            f"left out of {what}: {r['run']} ({r['method']} seed {_value(r['seed'])}) is "
            f"{r['status']}{err}",
            file=sys.stderr,
        )
    if not metrics.empty:
        metrics = metrics[metrics["run"].isin(finished["run"])]
    return metrics, finished


def recorded_training(run_dir: str, summary: dict) -> tuple[str | None, dict | None]:
    """(training identity, training config) of a run: from its summary.json, or for runs from
    before it was recorded, from its last checkpoint's config; (None, None) if neither."""
    if summary.get("train_identity"):
        return summary["train_identity"], summary.get("train_config")
    ck = os.path.join(run_dir, "checkpoints", "last.pt")
    if not os.path.isfile(ck):
        return None, None
    from experiments.runner import checkpoint

    try:
        config = checkpoint.load(ck)["config"]
    except Exception as e:  # noqa: BLE001 (an unreadable checkpoint: identity unknown, not fatal)
        print(
            f"note: {run_dir}: its training identity is unknown (no summary record, and "
            f"{str(e).splitlines()[0]})",
            file=sys.stderr,
        )
        return None, None
    return checkpoint.training_identity(config), checkpoint.training_config(config)


def check_distinct(runs: pd.DataFrame) -> None:
    """Refuse two runs with the same training identity (else, where it is unrecorded, the same
    method label) and the same seed: they would be drawn as one run (a sweep passed twice, or
    seed=0,0). Runs that differ in any training option are kept apart by ``name_series``."""
    known = runs.dropna(subset=["method", "seed"]).copy()
    # the label names the sampler too: the same training evaluated by MaskGIT is another series
    known["_id"] = known["train_identity"].fillna("") if len(known) else []
    dup = known[known.duplicated(["method", "_id", "seed"], keep=False)]
    if dup.empty:
        return
    lines = "\n  ".join(
        f"{m} seed {s}: {', '.join(sorted(map(str, grp['run'])))}"
        for (m, _, s), grp in dup.groupby(["method", "_id", "seed"])
    )
    raise NotComparableError(
        f"these runs train the same config with the same seed, so they would be averaged as "
        f"one:\n  {lines}\nPass each sweep once, and each run once."
    )


# a row's evaluation setting: the rows of one label that differ here are separate series
EVAL_SETTING = {
    "solver": "solver",
    "sample_steps": "steps",
    "temperature": "τ",
    "cfg_scale": "cfg",
    "num_samples": "n",
}


def _value(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _short(keys: list[str]) -> dict[str, str]:
    """Display names of config keys: the last component, unless two keys share it."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (n if last.count(n) == 1 else k) for k, n in zip(keys, last, strict=True)}


def name_series(metrics: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Every row's series: its method label, plus the training options and evaluation
    settings that tell apart the rows sharing that label (e.g. ``dfm-metric beta_scale=100``,
    ``cfm solver=heun``). The series goes in ``method`` (what every script groups by); the
    label stays in ``label``, the run's training digest in ``train_identity``."""
    if metrics.empty:
        return metrics
    m = metrics.copy()
    by_run = runs.set_index("run")
    m["label"] = m["method"]
    m["train_identity"] = m["run"].map(by_run["train_identity"]).fillna("unrecorded")
    configs = by_run["train_config"].to_dict()
    names = pd.Series("", index=m.index)
    for label, rows in m.groupby("label"):
        parts = pd.DataFrame(index=rows.index)
        ids = rows["train_identity"].unique()
        if len(ids) > 1:
            first = rows.groupby("train_identity")["run"].first()
            cfgs = {i: configs.get(first[i]) for i in ids}
            if all(isinstance(c, dict) for c in cfgs.values()):
                keys = sorted({k for c in cfgs.values() for k in c})
                diff = [k for k in keys if len({repr(c.get(k)) for c in cfgs.values()}) > 1]
                for k, short in _short(diff).items():
                    values = {i: _value(c.get(k)) for i, c in cfgs.items()}
                    parts[k] = short + "=" + rows["train_identity"].map(values)
            else:  # some run predates the recorded config: name its digest
                parts["id"] = "[" + rows["train_identity"].str[:6] + "]"
        for col, short in EVAL_SETTING.items():
            if col in rows and rows[col].astype("string").nunique(dropna=False) > 1:
                parts[col] = short + "=" + rows[col].map(_value)
        suffix = parts.agg(" ".join, axis=1) if len(parts.columns) else ""
        names[rows.index] = (label + " " + suffix).str.strip() if len(parts.columns) else label
    m["method"] = names
    many = m.groupby(["method", "seed"])["run"].unique()
    many = many[many.map(len) > 1]
    if len(many):
        lines = "\n  ".join(
            f"{k[0]} seed {k[1]}: {', '.join(sorted(map(str, v)))}" for k, v in many.items()
        )
        raise NotComparableError(
            f"these runs train the same config with the same seed and were evaluated the same "
            f"way, so they would be averaged as one:\n  {lines}\nPass each run once."
        )
    return m


def run_name(run_dir: str, num_sweeps: int) -> str:
    parts = os.path.normpath(run_dir).split(os.sep)
    return parts[-1] if num_sweeps == 1 else "/".join(parts[-2:])


# what produced a results row; rows that differ in any of these are not comparable (bf16 and
# fp32 runs are two experiments: compare them explicitly, never average them as one)
IDENTITY = (
    "tokenizer_sha256",
    "metric_net_sha256",
    "reference_sha256",
    "extractor",
    "train_precision",
    "eval_precision",
)


def recorded_train_precision(summary: dict) -> str:
    """A run's training precision from its summary.json; runs from before it was recorded get
    what the default setting meant then (shared/precision.py: bf16 on CUDA, fp32 on CPU)."""
    if summary.get("train_precision"):  # recorded: no torch import (shared/precision.py's)
        return summary["train_precision"]
    from shared.precision import legacy_train_precision

    device = "cuda" if "cuda" in str(summary.get("device", "")) else "cpu"
    return legacy_train_precision("auto", device)


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
    if metrics.empty:
        return
    absent = [c for c in IDENTITY if c not in metrics]
    if absent:  # rows from before a column existed: say what the check could not see
        print(
            f"note: the {what} do not record {', '.join(absent)}; they are compared "
            f"without {'it' if len(absent) == 1 else 'them'}",
            file=sys.stderr,
        )
    if not cols:
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


def status_labels(runs: pd.DataFrame, metrics: pd.DataFrame) -> dict[str, str]:
    """series → 'purr (3 finished)' or 'dfm (2 finished, 1 failed)', over the runs whose rows
    make up each series."""
    status = runs.set_index("run")["status"]
    out = {}
    for series, grp in metrics.groupby("method"):
        counts = status[grp["run"].unique()].value_counts()
        parts = [f"{n} {s}" for s, n in counts.items()]
        out[series] = f"{series} ({', '.join(parts)})"
    return out


def run_summary(run_dir: str) -> dict:
    try:
        with open(os.path.join(run_dir, "summary.json")) as f:
            return json.load(f)
    except FileNotFoundError:
        raise SystemExit(f"error: {run_dir} is not a run folder (no summary.json)") from None
    except ValueError as e:
        raise SystemExit(f"error: {run_dir}/summary.json is unreadable ({e})") from None


def check_runs(run_dirs: list[str], allow_unfinished: bool = False) -> list[str]:
    """The run folders to sample, checked before any sampling: each finished (unless
    ``allow_unfinished``) with a last checkpoint, all measured the same way (tokenizer, metric
    network, reference, precisions: their summary.json identity), and no two with the same
    training identity and seed (they would be averaged as one). Refuses naming every run."""
    problems, seen, measured = [], {}, {}
    for run in run_dirs:
        summary = run_summary(run)
        ident = {
            **summary.get("identity", {}),
            "train_precision": summary.get("train_precision"),
            "eval_precision": summary.get("eval_precision"),
        }
        measured.setdefault(json.dumps(ident, sort_keys=True), []).append(run)
        status = summary.get("status", "unknown")
        if not os.path.isfile(os.path.join(run, "checkpoints", "last.pt")):
            problems.append(f"{run}: no checkpoints/last.pt (status {status})")
            continue
        if status != "finished" and not allow_unfinished:
            problems.append(
                f"{run}: status {status}, not finished (--allow-unfinished to "
                "sample its last checkpoint anyway)"
            )
            continue
        key = (recorded_training(run, summary)[0], summary.get("seed"))
        if key in seen:
            problems.append(
                f"{run} and {seen[key]} train the same config with seed {key[1]}: "
                "pass each run once"
            )
        seen.setdefault(key, run)
    if len(measured) > 1:
        problems += [f"measured with {k}: {', '.join(v)}" for k, v in measured.items()]
        problems.append("runs measured differently cannot be drawn in one comparison")
    if problems:
        raise SystemExit("error: cannot sample these runs:\n  " + "\n  ".join(problems))
    return list(run_dirs)


def output_stems(run_dirs: list[str]) -> dict[str, str]:
    """run → a file-name stem: its method label, with its seed (and training digest) added
    when other runs share the label, so that no two runs' figures overwrite each other."""
    info = {}
    for run in run_dirs:
        summary = run_summary(run)
        ident = recorded_training(run, summary)[0] or ""
        info[run] = (summary.get("method", "run"), summary.get("seed"), ident)
    stems = {}
    for run, (label, seed, ident) in info.items():
        same = [i for i in info.values() if i[0] == label]
        stem = label
        if len(same) > 1:
            stem += f"_seed{seed}"
            if len({i[2] for i in same}) > 1:
                stem += f"_{ident[:6]}"
        stems[run] = stem
    return stems


def trained_in(run_dir: str) -> str:
    """The run's training precision, as its summary.json records it."""
    try:
        with open(os.path.join(run_dir, "summary.json")) as f:
            return recorded_train_precision(json.load(f))
    except (OSError, ValueError):
        return "unrecorded"


def save_figure(fig, out_dir: str, stem: str, exts=("png", "pdf")) -> list[str]:
    """Write ``fig`` as <out_dir>/<stem>.<ext> for each format, close it, return the paths.

    Each file is written beside its final name and renamed into place, so a reader (or a
    second run of the same sweep redrawing the live figure, under pack.py or SLURM) never
    sees a half-written figure."""
    import matplotlib.pyplot as plt  # callers choose the backend before importing pyplot

    paths = [os.path.join(out_dir, f"{stem}.{ext}") for ext in exts]
    try:
        for p, ext in zip(paths, exts, strict=True):
            tmp = f"{p}.{os.getpid()}.tmp"
            try:
                fig.savefig(tmp, dpi=130, format=ext)
                os.replace(tmp, p)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
    finally:
        plt.close(fig)
    return paths
