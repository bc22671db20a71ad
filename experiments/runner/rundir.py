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
    def accept(self, files: dict[str, str] | None = None) -> list[str]:
        """This launch owns the directory: write its .hydra files (``files``: name → text, as
        Hydra would write them) and keep a copy, and delete the temporaries that killed writers
        left behind. Returns the deleted temporaries. Without ``files`` (a run started outside
        Hydra), whatever .hydra holds is kept as the owner's copy."""
        if files:  # from this process's memory: never another launch's files
            for folder in (self.hydra, self.hydra_copy):
                for name, text in files.items():
                    atomic_write_text(os.path.join(folder, name), text)
        elif os.path.isdir(self.hydra):
            tmp = self.hydra_copy + ".new"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(self.hydra, tmp)
            shutil.rmtree(self.hydra_copy, ignore_errors=True)
            os.replace(tmp, self.hydra_copy)
        return remove_stale_temporaries(self.path)

    def refuse(self) -> None:
        """Undo what Hydra wrote for a refused launch: restore the owner's .hydra files."""
        if os.path.isdir(self.hydra_copy):
            for name in os.listdir(self.hydra_copy):
                with open(os.path.join(self.hydra_copy, name), "rb") as f:
                    data = f.read()
                with contextlib.suppress(OSError), atomic_open(os.path.join(self.hydra, name)) as f:
                    f.write(data)

    # --------------------------------------------------------------- summary.json
    def read_summary(self) -> dict | None:
        """summary.json, or None when it is absent or unreadable."""
        try:
            with open(self.summary_path) as f:
                summary = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        return summary if isinstance(summary, dict) else None

    def set_aside_unreadable_summary(self) -> str | None:
        """An unreadable summary.json (cut, or not JSON) is moved to
        ``summary.json.unreadable-<time>`` rather than replaced, so the launch history it held
        is not lost; returns where it went (None: nothing to move)."""
        if not os.path.isfile(self.summary_path) or self.read_summary() is not None:
            return None
        kept = f"{self.summary_path}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}"
        os.replace(self.summary_path, kept)
        return kept

    def holds(self) -> str | None:
        """What this directory holds from earlier launches, in words (None: nothing)."""
        rows = 0
        if os.path.isfile(self.metrics):
            with open(self.metrics, "rb") as f:
                rows = max(0, sum(1 for _ in f) - 1)
        summary = self.read_summary()
        has_checkpoint = os.path.isfile(self.checkpoint)
        if not (rows or has_checkpoint or summary or os.path.isfile(self.summary_path)):
            return None
        summary = summary or {}
        status = summary.get("status", "unknown-status")
        step, total = summary.get("step"), summary.get("total_steps")
        at = f", step {step} of {total}" if step is not None and total else ""
        return (
            f"a {status} {summary.get('method') or ''} run".replace("  ", " ")
            + f" ({rows} evaluation row{'s' if rows != 1 else ''}{at}"
            + f"{'' if has_checkpoint else ', no checkpoint'})"
        )

    def discard_results(self) -> list[str]:
        """Remove the metrics and checkpoint of an earlier run (a launch that starts from step 0
        here replaces them; left in place, a stop before the first checkpoint would leave them
        to be resumed or read as this run's). Returns what was removed."""
        removed = []
        for path in (self.metrics, self.checkpoint):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
                removed.append(path)
        return removed

    def write_summary(self, summary: dict) -> None:
        atomic_write_text(self.summary_path, json.dumps(summary, indent=2, default=str))
