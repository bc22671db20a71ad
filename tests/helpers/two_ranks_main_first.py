"""Two gloo ranks whose collectives time out after 2 s; rank 0's work takes 3.5 s.

    RANK=r python tests/helpers/two_ranks_main_first.py STORE FOLDER ok|fail

Dist.main_first must keep rank 1 out of every collective meanwhile (it polls a file), so
both ranks finish (ok) or both fail naming rank 0's error (fail)."""

import datetime
import sys
import time

import torch.distributed as dist

from experiments.runner.build import Dist
from experiments.runner.errors import RunError

store, folder, mode = sys.argv[1:4]
rank = int(__import__("os").environ["RANK"])
dist.init_process_group(
    "gloo",
    init_method=f"file://{store}",
    rank=rank,
    world_size=2,
    timeout=datetime.timedelta(seconds=2),
)
ranks = Dist(rank, 2)


def work():
    time.sleep(3.5)
    if mode == "fail":
        raise ValueError("no reference images")
    return "built"


try:
    print(f"rank {rank}: {ranks.main_first(work, folder, 'evaluator', poll_s=0.1)!r}", flush=True)
    ranks.close(clean=True)
except (RunError, ValueError) as e:
    print(f"rank {rank} failed: {e}", flush=True)
    sys.exit(3)
