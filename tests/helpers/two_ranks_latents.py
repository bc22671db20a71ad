"""One rank of the shard-extraction race test (tests/runner/test_relaunch.py), for tests only.

    RANK=r python tests/helpers/two_ranks_latents.py CONFIG.yaml STORE

Rank 1 sees the manifest at once, as it does when rank 0 was quicker to write it than rank 1
was to look: the ranks' views of the file system differ, and they must still take the same
path through the collectives (then agree on one all-reduce).
"""

import datetime
import os
import sys

import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from experiments.runner.build import Dist, load_tokenizer, prepare_latents

config, store = sys.argv[1], sys.argv[2]
rank = int(os.environ["RANK"])
dist.init_process_group(
    "gloo",
    init_method=f"file://{store}",
    rank=rank,
    world_size=2,
    timeout=datetime.timedelta(seconds=30),
)
if rank == 1:  # in the runner's own decisions (build.py), not in the file polls that follow
    real_isfile = os.path.isfile

    def early_isfile(p):
        caller = sys._getframe(1).f_code.co_filename
        return (str(p).endswith("manifest.json") and caller.endswith("build.py")) or real_isfile(p)

    os.path.isfile = early_isfile
cfg = OmegaConf.load(config)
shards = prepare_latents(cfg, load_tokenizer(cfg), Dist(rank, 2, 0))
total = torch.tensor([float(rank + 1)])
dist.all_reduce(total)
print(f"rank {rank}: {len(shards)} shard rows, all-reduce {total.item():g}")
dist.destroy_process_group()
