"""Each adapter of distengine/torch_private.py against the real torch objects it reaches into.

These run on the pinned torch and, through tests/torch_range.py, on the oldest and newest
supported torch: a rename in a new torch fails here, by name, instead of deep in a fit.
"""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from distengine import torch_private as tp


def test_batch_norm_base_covers_every_batch_norm_and_nothing_else():
    for cls in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm):
        assert tp.is_batchnorm(cls(4))
    assert tp.is_batchnorm(nn.LazyBatchNorm1d())
    for other in (nn.LayerNorm(4), nn.InstanceNorm1d(4), nn.GroupNorm(2, 4), nn.Linear(2, 2)):
        assert not tp.is_batchnorm(other)


def test_grad_scaler_stage_and_scale_follow_a_step():
    from torch.amp.grad_scaler import OptState

    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    # GradScaler on the CPU is enabled from torch 2.3 on; the fields are the same as on CUDA
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 4)
    assert tp.grad_scaler_scale_tensor(scaler) is None  # created lazily by the first scale()
    scaler.scale(model(torch.ones(2, 3)).sum()).backward()
    scale = tp.grad_scaler_scale_tensor(scaler)
    assert isinstance(scale, torch.Tensor) and scale.item() == 2.0 ** 4
    assert tp.grad_scaler_stage(scaler, opt) is OptState.READY
    scaler.unscale_(opt)
    assert tp.grad_scaler_stage(scaler, opt) is OptState.UNSCALED
    scaler.step(opt)
    assert tp.grad_scaler_stage(scaler, opt) is OptState.STEPPED
    scaler.update()
    # an inf gradient: the step is skipped and the scale lowered, seen through the adapter
    before = tp.grad_scaler_scale_tensor(scaler).clone()
    model.weight.grad = torch.full_like(model.weight, float("inf"))
    scaler.scale(model(torch.ones(2, 3)).sum()).backward()
    scaler.step(opt)
    scaler.update()
    assert tp.grad_scaler_scale_tensor(scaler) < before


def test_tensorboard_file_writer_writes_into_the_run_folder(tmp_path):
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import scalar

    writer = SummaryWriter(str(tmp_path))
    fw = tp.summary_file_writer(writer)
    fw.add_summary(scalar("x", 1.5), 3)
    writer.close()
    fw = tp.summary_file_writer(writer)  # reopened after close, as add_* would
    fw.add_summary(scalar("x", 2.5), 4)
    writer.close()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = []
    for name in sorted(os.listdir(tmp_path)):
        acc = EventAccumulator(str(tmp_path / name))
        acc.Reload()
        values += [(e.step, e.value) for e in acc.Scalars("x")]
    assert sorted(values) == [(3, 1.5), (4, 2.5)]


@pytest.mark.timeout(60)
def test_rebuild_ddp_buckets_on_a_one_rank_group(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from tests.helpers import free_port

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(nn.Linear(3, 2))
        tp.ddp_rebuild_buckets(ddp)  # before the first backward: builds; then a no-op
        ddp(torch.ones(1, 3)).sum().backward()
        tp.ddp_rebuild_buckets(ddp)
        assert ddp.module.weight.grad is not None
    finally:
        dist.destroy_process_group()
