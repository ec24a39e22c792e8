"""The gloo side groups (sharded checkpoint saves, the stop vote under NCCL) use the Trainer's
``dist_timeout``, not torch's 30 min default (issue 21 item 3.5): a rank whose peer skips a
collective on one fails within the configured timeout."""
from __future__ import annotations

from tests.helpers import run_ranks

TIMEOUT_S = 2.0
PEER_AWAY_S = 10.0  # rank 0 skips the collectives and stays alive this long


def _side_groups(rank, tmp):
    import time

    import torch
    import torch.distributed as dist

    import distengine as de
    from distengine.checkpoint.sharded import ShardedCheckpointer
    from distengine.stop_vote import StopVote

    trainer = de.Trainer(accelerator="cpu", devices=2, dist_timeout=TIMEOUT_S, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp)
    from distengine.stage_run import StageRun

    StageRun(trainer, trainer._parts, "fit", None).setup_environment()  # the process group, as a call sets it up
    assert dist.is_initialized() and dist.get_world_size() == 2
    StopVote._side_group_needed = staticmethod(lambda: True)  # as under NCCL
    groups = {"checkpoint": ShardedCheckpointer()._checkpoint_group(), "stop vote": StopVote().group}
    out = {}
    if rank == 0:
        time.sleep(PEER_AWAY_S)
        return out
    for name, group in groups.items():
        start = time.monotonic()
        try:
            dist.all_reduce(torch.ones(1), group=group)
            out[name] = (time.monotonic() - start, "no error")
        except RuntimeError as exc:
            out[name] = (time.monotonic() - start, str(exc)[:300])
    return out


def test_side_groups_fail_within_the_trainer_dist_timeout(tmp_path):
    _, waited = run_ranks(_side_groups, 2, str(tmp_path), timeout=90)
    assert set(waited) == {"checkpoint", "stop vote"}
    for name, (seconds, message) in waited.items():
        assert "timed out" in message.lower(), (name, message)
        assert seconds < PEER_AWAY_S / 2, (name, seconds, "the side group ignored dist_timeout")
