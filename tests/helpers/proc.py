"""Launching process trees from tests: on timeout the *whole* tree dies.

``subprocess.run(..., timeout=)`` kills only the child it started. torchrun starts each rank
in a session of its own, pack.py and submitit start theirs too, so killing the launcher
orphans them: a hung rank (blocked in a collective, where its SIGTERM handler only sets a
flag) then lives on under PID 1, holding its run directory's lock and a core. Here every
descendant is found through /proc, stopped (so none can spawn another), then killed.
"""

from __future__ import annotations

import os
import signal
import subprocess


def _children() -> dict[int, list[int]]:
    """parent pid → child pids, read from /proc (Linux)."""
    tree: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:  # ended while we looked
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])  # fields after "(comm)": state ppid
        tree.setdefault(ppid, []).append(int(name))
    return tree


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (children, grandchildren, …), whatever their session."""
    tree, out, todo = _children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_tree(pid: int) -> None:
    """SIGSTOP the tree (no new children while we look), look again, then SIGKILL all."""
    seen: set[int] = set()
    for _ in range(3):
        new = [p for p in [pid, *descendants(pid)] if p not in seen]
        if not new:
            break
        for p in new:
            try:
                os.kill(p, signal.SIGSTOP)
            except ProcessLookupError:
                pass
        seen.update(new)
    for p in seen:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_tree(cmd, *, timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=True, text=True, timeout=…)``, except that a
    timeout kills the whole process tree and fails with the output so far."""
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree(proc.pid)
            try:  # a descendant that escaped the scan may still hold the pipes: do not wait on it
                out, err = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                out, err = "", "(output lost: a descendant kept the pipes open)"
            raise AssertionError(
                f"{' '.join(map(str, cmd))[:300]} ran past {timeout:.0f} s; its process tree "
                f"was killed.\n--- stdout ---\n{out[-3000:]}\n--- stderr ---\n{err[-3000:]}"
            ) from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
