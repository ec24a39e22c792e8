"""Uneven IterableDataset shards: rank 0 yields 2 batches, rank 1 yields 4.

Each batch is all-reduced (a gradient of 4 numbers); after its loop a rank all-reduces one
number (an epoch-end metric). Rank 0 reaches that while rank 1 is still in its loop: the two
collectives differ in size and gloo aborts rank 1's process (exit 134, SIGABRT).
"""
import os
import time
from datetime import timedelta

import torch
import torch.distributed as dist

torch.set_num_threads(1)
dist.init_process_group("gloo", timeout=timedelta(seconds=float(os.environ.get("DISTENGINE_TIMEOUT", "20"))))
rank = dist.get_rank()


class Shard(torch.utils.data.IterableDataset):
    def __iter__(self):
        for _ in range(2 + 2 * rank):
            yield torch.ones(1000)


for batch in torch.utils.data.DataLoader(Shard(), batch_size=None):
    dist.all_reduce(batch)
dist.all_reduce(torch.ones(1))
time.sleep(3)  # rank 0: still here when its peer aborts
print(f"rank {rank} finished", flush=True)
dist.destroy_process_group()
