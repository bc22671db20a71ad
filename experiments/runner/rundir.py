"""A run directory and who may write to it.

    <run dir>/.lock              held (flock) by the one process writing here; names it
    <run dir>/.run/hydra/        the .hydra/ files of the launch that owns the directory
    <run dir>/summary.json       status: running | finished | interrupted | failed

The project's Hydra config sets ``hydra.output_subdir: null``, so Hydra writes no ``.hydra/``:
the runner writes this launch's files (from memory, :meth:`RunDir.accept`) once the launch owns
the directory, so a refused launch (directory locked, config differs from the checkpoint's)
changes nothing. When Hydra does write them (``hydra.output_subdir=.hydra`` on the command
line), ``RunDir.refuse`` puts the owner's copy back.

The lock is advisory ``flock``: the kernel releases it when its holder dies (SIGKILL,
node failure), so a preempted run never blocks its own requeue.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time

from shared.io import (
    atomic_open,
    atomic_write_text,
    release_flock,
    remove_stale_temporaries,
    take_flock,
)

from .errors import RunRefused


class RunDir:
    def __init__(self, path: str):
        self.path = path
        self.metrics = os.path.join(path, "metrics.csv")
        self.summary_path = os.path.join(path, "summary.json")
        self.checkpoint = os.path.join(path, "checkpoints", "last.pt")
        self.hydra = os.path.join(path, ".hydra")
        self.hydra_copy = os.path.join(path, ".run", "hydra")
        self._lock_file = None
        self._wrote_hydra = False

    # ------------------------------------------------------------------ lock
    def lock(self) -> None:
        """Take the directory's lock or refuse at once, naming the holder."""
        os.makedirs(self.path, exist_ok=True)

        def unsupported(e):  # e.g. Lustre mounted without flock support: warn, do not fail
            print(
                f"warning: cannot lock {self.path} ({e}); this file system does not support "
                "flock, so a second launch into this directory would not be stopped"
            )

        f, holder = take_flock(os.path.join(self.path, ".lock"), unsupported)
        if f is None:
            raise RunRefused(
                f"{self.path} is in use by {holder}; wait for that run to end (or stop it), or "
                "launch into another directory"
            )
        self._lock_file = f

    @property
    def locked(self) -> bool:
        return self._lock_file is not None

    def release(self) -> None:
        if self._lock_file is not None:
            release_flock(self._lock_file)
            self._lock_file = None

    # --------------------------------------------------------- ownership of .hydra
    def write_launch_files(self, files: dict[str, str] | None) -> None:
        """This launch's .hydra files (name → text, as Hydra writes them), from this process's
        memory, once it holds the lock and its checks passed: never another launch's files."""
        for name, text in (files or {}).items():
            atomic_write_text(os.path.join(self.hydra, name), text)
            self._wrote_hydra = True

    def accept(self, files: dict[str, str] | None = None) -> list[str]:
        """This launch owns the directory: keep its .hydra files (``files``, or for a run
        started outside Hydra whatever .hydra holds) as the owner's copy, and delete the
        temporaries that killed writers left behind. Returns the deleted temporaries."""
        if files:
            for name, text in files.items():
                atomic_write_text(os.path.join(self.hydra_copy, name), text)
        elif os.path.isdir(self.hydra):
            tmp = self.hydra_copy + ".new"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(self.hydra, tmp)
            shutil.rmtree(self.hydra_copy, ignore_errors=True)
            os.replace(tmp, self.hydra_copy)
        return remove_stale_temporaries(self.path)

    def refuse(self) -> None:
        """Undo this launch's .hydra files when it is refused after taking the lock: put the
        owner's copy back, or remove them where the folder had no owner yet. A launch that
        never held the lock wrote nothing (Hydra's own .hydra is off) and touches nothing."""
        if not self.locked:
            return
        if os.path.isdir(self.hydra_copy):
            for name in os.listdir(self.hydra_copy):
                with open(os.path.join(self.hydra_copy, name), "rb") as f:
                    data = f.read()
                with contextlib.suppress(OSError), atomic_open(os.path.join(self.hydra, name)) as f:
                    f.write(data)
        elif self._wrote_hydra:
            shutil.rmtree(self.hydra, ignore_errors=True)

    # --------------------------------------------------------------- summary.json
    def read_summary(self) -> dict | None:
        """summary.json, or None when it is absent or unreadable."""
        try:
            with open(self.summary_path) as f:
                summary = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        return summary if isinstance(summary, dict) else None

    def set_aside(self, path: str, tag: str) -> str | None:
        """Move ``path`` to a free ``<path>.<tag>-<time>[-n]`` beside it; returns where (None:
        there was no file)."""
        if not os.path.isfile(path):
            return None
        stem = f"{path}.{tag}-{time.strftime('%Y%m%d-%H%M%S')}"
        kept, n = stem, 0
        while os.path.exists(kept):
            n += 1
            kept = f"{stem}-{n}"
        os.replace(path, kept)
        return kept

    def set_aside_unreadable_summary(self) -> str | None:
        """An unreadable summary.json (cut, or not JSON) is moved to
        ``summary.json.unreadable-<time>`` rather than replaced, so the launch history it held
        is not lost; returns where it went (None: nothing to move)."""
        if not os.path.isfile(self.summary_path) or self.read_summary() is not None:
            return None
        return self.set_aside(self.summary_path, "unreadable")

    def metric_rows(self) -> int:
        """The number of lines after the header of metrics.csv (0: none, or no file)."""
        if not os.path.isfile(self.metrics):
            return 0
        with open(self.metrics, "rb") as f:
            return max(0, sum(1 for _ in f) - 1)

    def holds(self) -> str | None:
        """What this directory holds from earlier launches, in words (None: nothing)."""
        rows = self.metric_rows()
        has_checkpoint = os.path.isfile(self.checkpoint)
        if not (rows or has_checkpoint or os.path.isfile(self.summary_path)):
            return None
        summary = self.read_summary()
        details = []
        if summary is None and os.path.isfile(self.summary_path):
            what = "a run whose summary.json cannot be read"
        else:
            summary = summary or {}
            status = summary.get("status", "unrecorded")
            words = " ".join(x for x in (status, summary.get("method"), "run") if x)
            what = f"{'an' if words[0] in 'aeiou' else 'a'} {words}"
            step, total = summary.get("step"), summary.get("total_steps")
            if step is not None and total:
                details.append(f"step {step} of {total}")
        details.append(f"{rows} evaluation row{'s' if rows != 1 else ''}")
        if not has_checkpoint:
            details.append("no checkpoint")
        return f"{what} ({', '.join(details)})"

    def discard_results(self) -> list[str]:
        """Before a launch from step 0: set an earlier run's metrics.csv aside
        (``metrics.csv.replaced-<time>``) and remove its checkpoint, so a stop before the
        first checkpoint cannot leave them to be resumed or read as this run's. Returns what
        was moved or removed."""
        done = []
        kept = self.set_aside(self.metrics, "replaced")
        if kept:
            done.append(kept)
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.checkpoint)
            done.append(self.checkpoint)
        return done

    def write_summary(self, summary: dict) -> None:
        atomic_write_text(self.summary_path, json.dumps(summary, indent=2, default=str))
