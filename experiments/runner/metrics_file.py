"""``metrics.csv``: its columns, its writer, and the check every reader runs before trusting it.

Torch-free, so the analysis layer verifies a run's rows without importing the trainer.

A file is *well formed* when every row has exactly the header's fields, the columns that
every row fills are present and parse as numbers (at least one of the FD columns among them),
and no step appears twice. It is *complete* when its rows are the evaluations the run's
``summary.json`` says it made: a finished run has a row at every step of ``eval_steps``.
Either failure is a :class:`MetricsFileError` whose one line names the file, the row and the
command that repairs it; a relaunch of the run rewrites the file from its checkpoint, which
keeps a copy of the rows it has passed (``experiments/runner/checkpoint.py``).
"""

from __future__ import annotations

import csv
import io
import math
import os

from shared.io import atomic_write_text

from .errors import RunError

METRIC_COLUMNS = [
    "method",
    "seed",
    "step",
    "total_steps",
    "images_seen",
    "train_flops",
    "budget_fraction",
    "wall_s",
    "loss",
    "fd_fashion",
    "fid_inception",
    "kid",
    "kid_std",
    "precision",
    "recall",
    "inception_score",
    "nfe",
    "nfe_rows",
    "sample_steps",
    "solver",
    "temperature",
    "cfg_scale",
    "num_samples",
    "extractor",
    "eval_s",
    # baselines at the same n: held-out real images, and their tokenizer reconstructions
    "fd_real",
    "fd_recon",
    # identity: what produced the row (analysis refuses to compare rows that differ here)
    "tokenizer_sha256",
    "metric_net_sha256",
    "reference",
    "reference_sha256",
    # resolved precisions (fp32 | bf16) of training and of evaluation sampling
    "train_precision",
    "eval_precision",
    # learning-rate schedule (constant | wsd<fraction>) and, under wsd, the step its decay
    # began (a decay branch's fork; experiments/runner/train_loop.py)
    "lr_schedule",
    "decay_from",
]
# filled in every row this project has ever written (older files lack later columns)
INTEGER_COLUMNS = ("seed", "step", "total_steps", "images_seen", "train_flops", "num_samples")
FD_COLUMNS = ("fd_fashion", "fid_inception")
# keys that move a run's evaluation steps: a relaunch that changed one (allowed for the eval
# keys, under allow_changes for the rest) leaves rows of two plans, which no check can match
PLAN_KEYS = ("budget.", "eval.points", "eval.spacing", "optim.schedule", "optim.decay_fraction")


class MetricsFileError(RunError):
    """A metrics.csv that cannot be trusted; the message names the file and the repair,
    ``problem`` says what is wrong alone."""

    def __init__(self, path: str, problem: str, repair: str):
        super().__init__(f"{path}: {problem}" + (f"; {repair}" if repair else ""))
        self.problem = problem


def write_csv(path: str, rows: list[dict]) -> None:
    atomic_write_text(path, csv_text(rows))


def csv_text(rows: list[dict]) -> str:
    """The bytes ``write_csv`` writes for ``rows`` (so two row lists compare as files do)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def read_csv(path: str) -> list[dict]:
    """The rows as written, unchecked (an absent file: no rows)."""
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _number(text) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value


def row_problem(row: dict) -> str | None:
    """Why one row (from ``csv.DictReader``) is not a complete evaluation row, or None."""
    if None in row:
        return "it has more fields than the header"
    cut = [k for k, v in row.items() if v is None]
    if cut:
        return f"it ends before column {cut[0]!r} (the line was cut)"
    for key in INTEGER_COLUMNS:
        if key in row and (_number(row[key]) is None or not float(row[key]).is_integer()):
            return f"{key}={row[key]!r} is not an integer"
    fds = [_number(row[k]) for k in FD_COLUMNS if row.get(k) not in (None, "")]
    if not fds or any(v is None for v in fds):
        shown = ", ".join(f"{k}={row.get(k)!r}" for k in FD_COLUMNS if k in row)
        return f"it has no readable FD ({shown})"
    return None


def verify_rows(path: str, repair: str) -> list[dict]:
    """The rows of ``path``, each checked by :func:`row_problem` and no step twice; refuses
    (MetricsFileError, naming ``repair``) the first problem. An absent file has no rows."""
    if not os.path.isfile(path):
        return []
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise MetricsFileError(path, f"it cannot be read ({e})", repair) from None
    missing = [c for c in ("step", "method") if c not in header]
    if missing:
        raise MetricsFileError(path, f"the header lacks {missing[0]!r}", repair)
    seen = set()
    for line, row in enumerate(rows, start=2):
        problem = row_problem(row)
        if problem is None and row["step"] in seen:
            problem = f"step {row['step']} appears twice"
        if problem:
            raise MetricsFileError(path, f"line {line} is damaged: {problem}", repair)
        seen.add(row["step"])
    return rows


def missing_steps(rows: list[dict], expected) -> list[int]:
    """The steps of ``expected`` that no row has."""
    have = {int(float(r["step"])) for r in rows}
    return sorted(int(s) for s in expected if int(s) not in have)


def verify_against_summary(path: str, rows: list[dict], summary: dict, repair: str) -> None:
    """A finished run's rows are exactly its ``eval_steps``; an unfinished run has no row
    that is not one of them. Refuses with one line naming the file and ``repair``."""
    planned = summary.get("eval_steps")
    changed = [k for launch in summary.get("launches") or () for k in launch.get("changed") or ()]
    if not planned or any(k.startswith(PLAN_KEYS) for k in changed):
        return  # the plan changed on a relaunch: its rows follow two plans
    extra = sorted({int(float(r["step"])) for r in rows} - {int(s) for s in planned})
    if extra:
        raise MetricsFileError(
            path, f"rows at steps {extra} that summary.json's evaluation plan does not have", repair
        )
    if summary.get("status") == "finished":
        lost = missing_steps(rows, planned)
        if lost:
            raise MetricsFileError(
                path,
                f"the run is finished but has no row for the evaluation at step"
                f"{'s' if len(lost) > 1 else ''} {', '.join(map(str, lost))}",
                repair,
            )


def finite(value) -> bool:
    number = _number(value)
    return number is not None and math.isfinite(number)
