"""A run directory and who may write to it.

    <run dir>/.lock              held (flock) by the one process writing here; names it
    <run dir>/.run/hydra/        the .hydra/ files of the launch that owns the directory
    <run dir>/summary.json       status: running | finished | interrupted | failed

Hydra writes ``.hydra/config.yaml`` for every launch before any of our code runs, so a launch
that is then refused (directory locked, config differs from the checkpoint's) would leave a
finished run described by a config it never ran. ``RunDir.refuse`` puts the owner's copy
back. The lock is advisory ``flock``: the kernel releases it when its holder dies (SIGKILL,
node failure), so a preempted run never blocks its own requeue.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil

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
    def accept(self) -> list[str]:
        """This launch owns the directory: keep a copy of its .hydra files, and delete the
        temporaries that killed writers left behind. Returns the deleted temporaries."""
        if os.path.isdir(self.hydra):
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
        try:
            with open(self.summary_path) as f:
                return json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def write_summary(self, summary: dict) -> None:
        atomic_write_text(self.summary_path, json.dumps(summary, indent=2, default=str))
