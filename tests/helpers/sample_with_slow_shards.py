"""Run ``experiments/sample.py`` with a short process-group timeout and slow shards (tests only).

    python tests/helpers/sample_with_slow_shards.py TIMEOUT_S SHARD_S -- <sample.py arguments>

Every collective times out after TIMEOUT_S seconds and every shard takes at least SHARD_S:
the shape of an 8-GPU ImageNet job (10–40 min shards, NCCL's 10 min timeout) in seconds.
"""

import datetime
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch.distributed as dist  # noqa: E402

import experiments.sample as sample  # noqa: E402
import experiments.sample_files as sample_files  # noqa: E402

timeout_s, shard_s = float(sys.argv[1]), float(sys.argv[2])
args = sys.argv[sys.argv.index("--") + 1 :]
real_init = dist.init_process_group
real_shard = sample_files.sample_shard


def short_timeout(*a, **k):
    return real_init(*a, **{**k, "timeout": datetime.timedelta(seconds=timeout_s)})


def slow_shard(*a, **k):
    t0 = time.time()
    out = real_shard(*a, **k)
    time.sleep(max(0.0, shard_s - (time.time() - t0)))
    return out


dist.init_process_group = short_timeout
sample_files.sample_shard = slow_shard
sys.argv = [os.path.join(REPO, "experiments", "sample.py"), *args]
sample.main()
