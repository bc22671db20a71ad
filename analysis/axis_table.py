"""One factor at a time: for each objective, the FD at one budget for every value of one
setting (the learning rate, the data fraction, the tokenizer, the schedule), the best value,
and whether it sits at an end of the grid (then the grid must be extended before the best
can be called tuned).

    python analysis/axis_table.py SWEEP [SWEEP ...] --key optim.lr [--budget 8e13]
    python analysis/axis_table.py SWEEP ... --key data.fraction --budget 1.6e14
    python analysis/axis_table.py SWEEP ... --key tokenizer      # the tokenizer's name
    python analysis/axis_table.py SWEEP ... --key optim.lr --budget 8e13 \
        --where backbone.preset=DiT-Micro/2                      # one size of a size scan

``--key`` is a training-config key (``optim.lr``, ``data.fraction``, ``optim.schedule``, …)
or ``tokenizer``. Within an objective the runs must differ in that key alone: a table of runs
that also differ in size or schedule is refused, naming the keys. ``--budget``: the nominal
FLOP budget the rows are read at (a run's evaluation at budget × 2^-k under log spacing;
default: each run's final row). Read at one budget, wsd runs whose total budgets differ are
compared (each row is the end of a run annealed to that budget). One seed per (objective,
value): this is a scan.

Writes axis_<key>.csv (method, value, FD, FD over the objective's best, best, at_edge) in
``--out`` and prints, per objective, the best value and whether it is interior.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import pandas as pd

from analysis.sweeps import add_sweep_arguments, open_sweeps
from shared.io import atomic_write_text
from shared.refusal import refuse


def config_default(key: str):
    """The value a run's recorded training config leaves out for ``key`` (a key added later
    and left out at its old default, e.g. data.fraction = 1): the schema's default."""
    from omegaconf import OmegaConf

    from experiments.runner.config import RunConfig

    return OmegaConf.select(OmegaConf.structured(RunConfig), key, default=None)


def value_of(run: pd.Series, key: str):
    if key == "tokenizer":
        with open(os.path.join(run["path"], "summary.json")) as f:
            return json.load(f).get("tokenizer")
    config = run["train_config"] or {}
    return config.get(key, config_default(key))


# Under wsd, a run's evaluation at a budget e below its own is its decay branch to e, which is
# the end of a run whose budget is e (experiments/runner/wsd.py): read at one --budget, runs of
# different total budgets are the same experiment there.
BUDGET_KEYS = ("budget.train_flops", "budget.images")


def other_differences(configs: list[dict], key: str, annealed_at_budget: bool = False) -> list[str]:
    """The training-config keys other than ``key`` on which these runs differ (the total
    budget left out when every run is read at one budget it was annealed at)."""
    ignored = {key}
    if annealed_at_budget and all(c.get("optim.schedule") == "wsd" for c in configs):
        ignored |= set(BUDGET_KEYS)
    keys = sorted(set().union(*configs) - ignored)
    return [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]


def at_budget(metrics: pd.DataFrame, runs: pd.DataFrame, metric: str, budget: float | None):
    """One row per run: its FD at ``budget`` (nominal, as compute_frontier matches budgets),
    or at its last evaluation."""
    rows = []
    by_run = runs.set_index("run")
    for run, grp in metrics.groupby("run"):
        flops = grp["train_flops"].astype(float)
        if budget is None:
            row = grp.loc[flops.idxmax()]
        else:
            nominal = by_run.loc[run, "budget_train_flops"]
            if nominal is None or (isinstance(nominal, float) and np.isnan(nominal)):
                continue
            k = np.round(np.log2(flops / float(nominal)))
            match = grp[np.isclose(float(nominal) * np.exp2(k), budget, rtol=1e-6)]
            if match.empty:
                continue
            row = match.iloc[-1]
        rows.append({"run": run, "label": row["label"], "fd": float(row[metric])})
    return pd.DataFrame(rows)


def axis_table(points: pd.DataFrame) -> pd.DataFrame:
    """``points``: one row per (label, value, fd). Per objective: each value's FD, its ratio
    to the objective's best, which value is best, and whether the best is at an end of the
    grid (the lowest or highest value; for a non-numeric axis there are no ends)."""
    out = []
    for label, grp in points.groupby("label", sort=True):
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in grp["value"])
        grp = grp.sort_values("value") if numeric else grp
        best = grp["fd"].idxmin()
        ends = {grp["value"].iloc[0], grp["value"].iloc[-1]} if numeric and len(grp) > 1 else set()
        for i, r in grp.iterrows():
            out.append(
                {
                    "method": label,
                    "value": r["value"],
                    "fd": r["fd"],
                    "fd_over_best": r["fd"] / grp["fd"].min(),
                    "best": i == best,
                    "at_edge": i == best and (r["value"] in ends or len(grp) < 3),
                }
            )
    return pd.DataFrame(out)


def verdicts(table: pd.DataFrame, key: str) -> list[str]:
    lines = []
    for label, grp in table.groupby("method", sort=True):
        best = grp[grp["best"]].iloc[0]
        if len(grp) < 3:
            why = f"only {len(grp)} value(s): not a grid yet"
        elif best["at_edge"]:
            why = "AT AN END of the grid: extend it"
        else:
            why = "interior"
        lines.append(f"{label:14s} best {key}={best['value']} (FD {best['fd']:.1f}): {why}")
    return lines


def matches(value, wanted: str) -> bool:
    """A recorded config value against ``--where``'s text: numbers by value (1e-3 = 0.001)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return float(wanted) == float(value)
        except ValueError:
            return False
    return str(value) == wanted


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_sweep_arguments(ap)
    ap.add_argument("--key", required=True, help="a training-config key, or 'tokenizer'")
    ap.add_argument("--budget", type=float, default=None, help="nominal FLOPs (default: final)")
    ap.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keep only runs whose training config has this value (repeatable)",
    )
    args = ap.parse_args(argv)
    sweeps = open_sweeps(args)
    rows = at_budget(sweeps.metrics, sweeps.runs, sweeps.metric, args.budget)
    runs = sweeps.runs.set_index("run")
    for condition in args.where:
        key, eq, wanted = condition.partition("=")
        if not eq or not key:
            refuse(f"--where {condition!r} is not KEY=VALUE, e.g. backbone.preset=DiT-Micro/2")
        rows = rows[[matches(value_of(runs.loc[r], key), wanted) for r in rows["run"]]]
    if rows.empty:
        where = f" with {' and '.join(args.where)}" if args.where else ""
        at = "at its final evaluation" if args.budget is None else f"at {args.budget:g} FLOPs"
        refuse(f"no run of {', '.join(sweeps.dirs)}{where} was evaluated {at}")
    rows["value"] = [value_of(runs.loc[r], args.key) for r in rows["run"]]
    for label, grp in rows.groupby("label"):
        configs = [runs.loc[r, "train_config"] or {} for r in grp["run"]]
        differ = other_differences(configs, args.key, annealed_at_budget=args.budget is not None)
        if differ:
            refuse(
                f"the {label} runs differ in {', '.join(differ)} as well as {args.key}: a "
                "one-factor table needs runs that differ in that key alone"
            )
        doubled = grp["value"].astype(str).duplicated()
        if doubled.any():
            refuse(f"{label} has several runs at {args.key}={grp['value'][doubled].iloc[0]}")
    table = axis_table(rows)
    stem = "axis_" + args.key.replace(".", "_")
    path = os.path.join(sweeps.out_dir, f"{stem}.csv")
    atomic_write_text(path, table.to_csv(index=False))
    where = "final evaluation" if args.budget is None else f"{args.budget:g} FLOPs"
    print(f"{sweeps.metric} at the {where}, by {args.key}:")
    for line in verdicts(table, args.key):
        print("  " + line)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
