"""Atomic file writes: a crash never leaves a half-written result behind.

Everything is written to a temporary file ``.<name>.<random>.tmp`` in the destination's
folder, flushed and fsync'ed, given the mode a plain ``open`` would give it (0666 minus the
umask), then moved into place with ``os.replace`` (atomic on POSIX file systems). A process
killed mid-write (SIGKILL, OOM, node failure) leaves its temporary behind;
:func:`remove_stale_temporaries` deletes those once their writer is known to be dead (the
trainer calls it while it holds its run directory's lock).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterator

TMP_SUFFIX = ".tmp"


def current_umask() -> int:
    """The process umask (read by setting and restoring it; there is no getter)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator:
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=TMP_SUFFIX)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp creates 0600; respect the umask
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` through :func:`atomic_open`. A failed write (full disk, quota, file-size
    limit) surfaces from torch's zip writer as ``RuntimeError: [enforce fail at
    inline_container.cc] unexpected pos``, with the real ``OSError`` only as its context: that
    OSError is raised instead, naming ``path``."""
    import torch

    try:
        with atomic_open(path, "wb") as f:
            torch.save(obj, f)
    except RuntimeError as e:
        cause = e.__cause__ or e.__context__
        if not isinstance(cause, OSError) or cause.errno is None:
            raise
        raise OSError(cause.errno, cause.strerror, os.fspath(path)) from None


# What to do about an OSError a user can cause, by errno (the run's files stay as they were:
# every write is atomic)
_OS_ERROR_FIXES = {
    errno.ENOSPC: "free space there and relaunch the same command",
    errno.EDQUOT: "free space (or raise the quota) and relaunch the same command",
    errno.EFBIG: "raise the file-size limit (ulimit -f) and relaunch the same command",
    errno.EACCES: "make it writable by this user, or choose another folder",
    errno.EPERM: "make it writable by this user, or choose another folder",
    errno.EROFS: "the file system is read-only: choose another folder",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
}


def os_error_line(e: OSError, path: str | os.PathLike | None = None) -> str:
    """One line for an OSError: the path, the errno's meaning and name, and the fix."""
    where = path or e.filename or "a file"
    name = errno.errorcode.get(e.errno, "") if e.errno else ""
    meaning = e.strerror or str(e)
    fix = _OS_ERROR_FIXES.get(e.errno)
    return f"{where}: {meaning}{f' ({name})' if name else ''}" + (f"; {fix}" if fix else "")


def remove_stale_temporaries(folder: str | os.PathLike, recursive: bool = True) -> list[str]:
    """Delete the temporaries of interrupted atomic writes under ``folder``; returns them.

    Only call this when no other process can be writing there (e.g. under a run lock).
    """
    pattern = os.path.join(os.fspath(folder), "**" if recursive else "", f".*{TMP_SUFFIX}")
    removed = []
    for path in glob.glob(pattern, recursive=recursive):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
            removed.append(path)
    return removed


def file_sha256(path: str | os.PathLike, algo: str = "sha256") -> str:
    """The digest (sha256 unless ``algo`` says otherwise) of a file's bytes, 1 MiB at a time."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def take_flock(path: str | os.PathLike, unsupported=None):
    """An exclusive advisory ``flock`` on ``path`` that names its holder in the file (host,
    pid, SLURM job, since): ``(open file, None)`` once held, or ``(None, the holder's
    description)`` when another process holds it. The kernel drops the lock when the holder
    dies. On a file system without flock (e.g. Lustre mounted without it), ``unsupported``
    is called with the error and the file is kept as if locked."""
    f = open(path, "a+")  # noqa: SIM115 (held until release_flock)
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        return None, holder
    except OSError as e:
        if unsupported is not None:
            unsupported(e)
    holder = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "slurm_job": os.environ.get("SLURM_JOB_ID"),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    f.seek(0)
    f.truncate()
    f.write(json.dumps(holder))
    f.flush()
    return f, None


def release_flock(f) -> None:
    """Drop a lock from :func:`take_flock` (the holder's name is cleared first)."""
    with contextlib.suppress(OSError):
        f.seek(0)
        f.truncate()
    f.close()  # closing the descriptor drops the flock
