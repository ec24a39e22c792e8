"""The private-torch adapter (distengine/torch_private.py) and the torch-version differences it hides."""
from __future__ import annotations

import os
import warnings

import torch

from tests.fsdp.models import Net


def _state(seed):
    model = Net(seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    model.training_step((torch.randn(4, 8), torch.randn(4, 1))).backward()
    opt.step()
    return {"state_dict": model.state_dict(), "optimizer_states": {"0": opt.state_dict()}}


def test_three_async_sharded_saves_in_a_row_then_load_the_last(tmp_path):
    """Torch 2.11's DefaultStager empties its copy table after every stage: a stager kept for
    reuse made the second async save raise ``KeyError: <class 'type'>``."""
    from distengine.checkpoint.sharded import ShardedCheckpointer, load_sharded

    ckpt = ShardedCheckpointer()
    saved = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # DCP: "no process group, one process"
        try:
            for step in range(3):
                state = _state(step)
                saved.append({k: v.clone() for k, v in state["state_dict"].items()})
                ckpt.save(tmp_path / f"step={step}.ckpt", state, meta={"global_step": step}, async_save=True)
            ckpt.wait()
        finally:
            ckpt.close()
    assert sorted(os.listdir(tmp_path)) == ["step=0.ckpt", "step=1.ckpt", "step=2.ckpt"]
    for step in (2, 0):
        target = {"state_dict": Net(seed=9).state_dict()}
        assert load_sharded(tmp_path / f"step={step}.ckpt", target)["global_step"] == step
        for k, v in saved[step].items():
            assert torch.equal(target["state_dict"][k], v), (step, k)


def test_stager_probe_matches_this_torch():
    from distengine import torch_private

    version = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    expected = version >= (2, 13)  # 2.11 closes the stager after each stage
    assert torch_private.stager_survives_stage() is expected


def test_fsdp_param_groups_reads_the_list_or_the_single_group():
    """2.13+ keep ``_fsdp_param_groups`` (a list); 2.11 only ``_fsdp_param_group`` (one or None)."""
    from types import SimpleNamespace

    from distengine.torch_private import fsdp_param_groups

    a, b = object(), object()
    assert fsdp_param_groups(SimpleNamespace(_fsdp_param_groups=[a, b])) == [a, b]
    assert fsdp_param_groups(SimpleNamespace(_fsdp_param_groups=[])) == []
    assert fsdp_param_groups(SimpleNamespace(_fsdp_param_group=a)) == [a]
    assert fsdp_param_groups(SimpleNamespace(_fsdp_param_group=None)) == []


def test_fsdp_param_groups_on_this_torch():
    """On a real (unsharded-process) FSDP state: the root and each block own one group."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    from distengine import torch_private
    from tests.helpers import free_port

    assert not dist.is_initialized()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        model = Net()
        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
        groups = torch_private.fsdp_param_groups(torch_private.fsdp_state(model.blocks[0]))
        assert len(groups) == 1 and len(groups[0].fsdp_params) == 4
        saved = torch_private.save_reshard_after_forward(model.blocks[0])
        model.blocks[0].set_reshard_after_forward(False, recurse=False)
        assert groups[0].post_forward_mesh_info is None
        torch_private.restore_reshard_after_forward(saved)
        assert groups[0].post_forward_mesh_info is not None
    finally:
        dist.destroy_process_group()
