"""What a finished fit leaves behind on two real gloo ranks.

The stop vote runs one step behind as a non-blocking all-reduce, so a fit that ends mid-epoch
used to return with the last vote still running in a gloo thread; torch then freed its tensor
whenever it got round to it, which during interpreter shutdown aborts the process (issue 12).
"""
from __future__ import annotations

import weakref

import torch
from torch.utils.data import DataLoader

import distengine as de
from distengine.callbacks.base import Callback
from tests.core.models import Regressor, make_net, regression_data
from tests.helpers import run_ranks


def _trainer(tmp, **kw):
    return de.Trainer(default_root_dir=tmp, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, **kw)


class _SideGroupSpy(Callback):
    def __init__(self):
        self.group = None

    def on_train_start(self, trainer, module):
        self.group = trainer._run.stop_vote.group


def _registered(group) -> bool:
    import torch.distributed as dist

    try:
        dist.get_process_group_ranks(group)
    except (ValueError, KeyError, RuntimeError):
        return False
    return True


def _fit_twice(rank, tmp):
    import torch.distributed as dist

    from distengine.stop_vote import StopVote

    vote_tensors = []
    start = StopVote._start

    def recording_start(self, flag, signum):
        work, buf = start(self, flag, signum)
        vote_tensors.append(weakref.ref(buf))
        return work, buf

    StopVote._start = recording_start
    loader = DataLoader(regression_data(48), batch_size=4)  # 6 batches per rank and epoch
    # 1: a plain gloo job; 4 steps end the fit mid-epoch, right after a vote was started
    _trainer(tmp, max_steps=4).fit(Regressor(make_net(), optimizer="sgd"), loader)
    last_vote_held = vote_tensors[-1]() is not None
    mine = dist.new_group()  # the user's own group, made between two fits
    # 2: as in an NCCL job, the fit votes over a gloo side group it creates for itself
    StopVote._side_group_needed = staticmethod(lambda: True)
    spy = _SideGroupSpy()
    _trainer(tmp, max_steps=4, callbacks=[spy]).fit(Regressor(make_net(), optimizer="sgd"), loader)
    x, y = torch.ones(1), torch.ones(1)
    dist.all_reduce(x, group=mine)  # the user's group and the default group still work
    dist.all_reduce(y)
    return (last_vote_held, len(vote_tensors), spy.group is not None, _registered(spy.group), _registered(mine),
            x.item(), y.item())


def test_fit_returns_with_no_vote_in_flight_and_only_its_own_group_destroyed(tmp_path):
    for last_vote_held, votes, had_side, side_alive, mine_alive, x, y in run_ranks(_fit_twice, 2, str(tmp_path)):
        assert votes >= 8
        assert not last_vote_held, "the last stop vote was still running, or its tensor held, when fit returned"
        assert had_side and not side_alive, "the side group the fit created outlived it"
        assert mine_alive and x == y == 2.0, "fit must leave the user's groups and the default group alone"
