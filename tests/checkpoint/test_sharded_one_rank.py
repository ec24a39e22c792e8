"""A job whose process group has ONE rank still saves sharded checkpoints over the gloo side
group (issue 21 item 3.6): under NCCL, DCP's async save cannot use the default group, so
counting ranks (world size > 1) instead of asking ``dist.is_initialized()`` broke it."""
from __future__ import annotations

import os

from tests.helpers import run_ranks


def _one_rank_async_save(rank, tmp):
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    from distengine.checkpoint.sharded import ShardedCheckpointer, load_consolidated

    dist.init_process_group("gloo")
    assert dist.get_world_size() == 1
    groups = []
    real = dcp.async_save

    def spy(*args, **kwargs):
        group = kwargs.get("process_group")
        groups.append(None if group is None else (group is dist.group.WORLD, dist.get_backend(group)))
        return real(*args, **kwargs)

    dcp.async_save = spy
    ckpt = ShardedCheckpointer()
    path = os.path.join(tmp, "epoch=0-step=1.ckpt")
    ckpt.save(path, {"state_dict": {"w": torch.arange(4.0)}}, meta={"global_step": 1}, async_save=True)
    ckpt.wait()
    state = load_consolidated(path)
    ckpt.close()
    return groups, state["state_dict"]["w"].tolist(), state["global_step"]


def test_one_rank_process_group_async_save_uses_the_gloo_side_group(tmp_path):
    [(groups, w, step)] = run_ranks(_one_rank_async_save, 1, str(tmp_path), timeout=90)
    assert groups == [(False, "gloo")], "a side gloo group, not the default (NCCL) group"
    assert w == [0.0, 1.0, 2.0, 3.0] and step == 1
