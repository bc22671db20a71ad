"""Launch ``experiments/run.py`` with one injected fault (for tests only).

    python tests/helpers/launch_with_fault.py MODE N -- <run.py arguments>

MODE: ``kill-at-step`` (SIGKILL inside the N-th optimiser step of this process),
``term-at-step`` (SIGTERM to itself during the N-th step: what SLURM sends before a kill),
``kill-in-checkpoint`` (SIGKILL halfway through writing the N-th checkpoint), ``none``.
"""

import os
import runpy
import signal
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import experiments.runner.checkpoint as checkpoint  # noqa: E402
import experiments.runner.train_loop as train_loop  # noqa: E402
from shared.io import atomic_open  # noqa: E402

mode, n = sys.argv[1], int(sys.argv[2])
args = sys.argv[sys.argv.index("--") + 1 :]
calls = {"n": 0}


def at_nth_call(real, fault):
    def wrapped(*a, **k):
        calls["n"] += 1
        if calls["n"] == n:
            return fault(real, *a, **k)
        return real(*a, **k)

    return wrapped


def kill_mid_step(real, *a, **k):
    os.kill(os.getpid(), signal.SIGKILL)


def term_mid_step(real, *a, **k):
    os.kill(os.getpid(), signal.SIGTERM)  # handled at the next bytecode: the step completes
    return real(*a, **k)


def kill_mid_write(real, obj, path):
    with atomic_open(path, "wb") as f:
        f.write(b"half a checkpoint")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)


if mode == "kill-at-step":
    train_loop.clip_and_step = at_nth_call(train_loop.clip_and_step, kill_mid_step)
elif mode == "term-at-step":
    train_loop.clip_and_step = at_nth_call(train_loop.clip_and_step, term_mid_step)
elif mode == "kill-in-checkpoint":
    checkpoint.atomic_torch_save = at_nth_call(checkpoint.atomic_torch_save, kill_mid_write)
elif mode != "none":
    raise SystemExit(f"unknown fault mode {mode!r}")
run_py = os.path.join(REPO, "experiments", "run.py")
sys.argv = [run_py] + args
runpy.run_path(run_py, run_name="__main__")
