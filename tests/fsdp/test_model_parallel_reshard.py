"""Resharding into a tensor-parallel layout (issue 23): checkpoints written without tensor
parallelism resume under ``ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=2)``
on 2 ranks and continue with the losses of the uninterrupted run (within 1e-5).

In the test process, one process trains the Llama-style model of tests/fsdp/llama.py for 2 epochs
(batch 8, 4 steps an epoch) twice: under ``FSDPStrategy()`` (a sharded DCP checkpoint after each
epoch, on a 1-rank group of its own) and without a strategy (one full ``.ckpt`` file after each
epoch). A 2-rank job then resumes each epoch-0 checkpoint (model and AdamW state) under TP 2 x DP 1:
both ranks read the same batches of 8, and the parameters are split by the tensor-parallel plan,
so DCP must reshard the complete (or 1-D sharded) tensors into column and row shards.

Between multi-rank layouts (a 2-rank job, then a 4-rank job): a TP 2 x DP 1 checkpoint resumes under
TP 4 x DP 1, and an FSDPStrategy() checkpoint of 2 ranks under TP 2 x DP 2, each continuing with the
losses of the run that wrote it (within 1e-5).
"""
from __future__ import annotations

import os

import pytest
import torch

from tests.fsdp.llama import Llama, ParallelLlama, data
from tests.helpers import run_ranks

pytestmark = pytest.mark.slow  # two one-process fits, two 2-rank jobs, one 4-rank job: ~55 s on a loaded 2-core machine

BATCH = 8


def _trainer(tmp, strategy, **kw):
    import distengine as de

    kw.setdefault("enable_checkpointing", False)
    return de.Trainer(accelerator="cpu", strategy=strategy, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp, **kw)


def _loader():
    return torch.utils.data.DataLoader(data(), batch_size=BATCH)


def _one_process(tmp, strategy):
    """2 epochs in this process; (per-step losses, the epoch-0 checkpoint's path)."""
    from distengine.callbacks import ModelCheckpoint

    ckpts = os.path.join(tmp, "ckpts")
    model = Llama()
    _trainer(tmp, strategy, max_epochs=2, enable_checkpointing=True,
             callbacks=[ModelCheckpoint(dirpath=ckpts, save_top_k=-1)]).fit(model, _loader())
    return model.losses, os.path.join(ckpts, "epoch=0-step=4.ckpt")


def _tensor_parallel_from(rank, tmp, paths):
    """Each checkpoint resumed under TP 2 x DP 1: the losses, and where wq's shard lives."""
    from distengine.strategies import ModelParallelStrategy

    out = {}
    for name, path in paths.items():
        model = ParallelLlama()
        _trainer(os.path.join(tmp, name), ModelParallelStrategy(1, 2), max_epochs=2).fit(
            model, _loader(), ckpt_path=path)
        wq = model.blocks[0].attn.wq.weight
        out[name] = (model.losses, tuple(wq.shape), tuple(wq.to_local().shape))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from distengine.strategies import FSDPStrategy

    tmp = tmp_path_factory.mktemp("reshard")
    fsdp_losses, fsdp_ckpt = _one_process(str(tmp / "fsdp"), FSDPStrategy())
    plain_losses, plain_ckpt = _one_process(str(tmp / "plain"), "auto")
    tp = run_ranks(_tensor_parallel_from, 2, str(tmp / "tp"), {"fsdp": fsdp_ckpt, "plain": plain_ckpt},
                   timeout=240)
    return {"fsdp": fsdp_losses, "plain": plain_losses, "fsdp_ckpt": fsdp_ckpt, "plain_ckpt": plain_ckpt}, tp


def test_one_process_checkpoints_are_a_sharded_directory_and_a_full_file(runs):
    one, _ = runs
    assert os.path.isdir(one["fsdp_ckpt"]) and os.path.isfile(os.path.join(one["fsdp_ckpt"], ".metadata"))
    assert os.path.isfile(one["plain_ckpt"])
    assert len(one["fsdp"]) == len(one["plain"]) == 8
    torch.testing.assert_close(one["fsdp"], one["plain"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("source", ["fsdp", "plain"])
def test_checkpoint_resumes_under_tensor_parallel_with_the_same_losses(runs, source):
    one, tp = runs
    for rank in (0, 1):
        losses, full_shape, local_shape = tp[rank][source]
        assert full_shape == (local_shape[0] * 2, local_shape[1])  # wq split by columns (output rows) over 2 ranks
        assert len(losses) == 4
        torch.testing.assert_close(losses, one[source][4:], rtol=0, atol=1e-5)
    assert tp[0][source][0] == tp[1][source][0]  # one tensor-parallel group: the same batches, the same loss


def test_full_checkpoint_of_a_plain_run_resumes_under_fsdp_in_one_process(runs, tmp_path):
    """The plain run's file holds the AdamW state keyed by number (``optimizer.state_dict()``);
    FSDP2's loader takes it keyed by name: it failed with ``KeyError: 'state.0.step'``."""
    from distengine.strategies import FSDPStrategy

    one, _ = runs
    model = Llama()
    _trainer(str(tmp_path), FSDPStrategy(), max_epochs=2).fit(model, _loader(), ckpt_path=one["plain_ckpt"])
    torch.testing.assert_close(model.losses, one["plain"][4:], rtol=0, atol=1e-5)


# ---------------------------------------------------------------- between multi-rank layouts
def _two_ranks(rank, tmp):
    """2 epochs under TP 2 x DP 1 (both ranks read batches of 8) and under FSDPStrategy() (4 a rank):
    the losses and the epoch-0 checkpoints."""
    from distengine.callbacks import ModelCheckpoint
    from distengine.strategies import FSDPStrategy, ModelParallelStrategy

    out = {}
    for name, strategy, model, batch in (("tp2", ModelParallelStrategy(1, 2), ParallelLlama(), BATCH),
                                         ("fsdp2", FSDPStrategy(), Llama(), BATCH // 2)):
        ckpts = os.path.join(tmp, name)
        _trainer(ckpts, strategy, max_epochs=2, enable_checkpointing=True,
                 callbacks=[ModelCheckpoint(dirpath=ckpts, save_top_k=-1)]).fit(
            model, torch.utils.data.DataLoader(data(), batch_size=batch))
        out[name] = (model.losses, os.path.join(ckpts, "epoch=0-step=4.ckpt"))
    return out


def _four_ranks(rank, tmp, paths):
    """The TP 2 checkpoint resumed under TP 4 x DP 1 (batches of 8 on every rank), the 2-rank FSDP one
    under TP 2 x DP 2 (4 a data-parallel group): the losses and wq's global and local shapes."""
    from distengine.strategies import ModelParallelStrategy

    out = {}
    for name, (dp, tp), batch in (("tp2", (1, 4), BATCH), ("fsdp2", (2, 2), BATCH // 2)):
        model = ParallelLlama()
        _trainer(os.path.join(tmp, name), ModelParallelStrategy(dp, tp), max_epochs=2).fit(
            model, torch.utils.data.DataLoader(data(), batch_size=batch), ckpt_path=paths[name])
        wq = model.blocks[0].attn.wq.weight
        out[name] = (model.losses, tuple(wq.shape), tuple(wq.to_local().shape))
    return out


@pytest.fixture(scope="module")
def relayout(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("relayout")
    two = run_ranks(_two_ranks, 2, str(tmp / "two"), timeout=240)
    four = run_ranks(_four_ranks, 4, str(tmp / "four"), {k: v[1] for k, v in two[0].items()}, timeout=240)
    return two, four


def test_tensor_parallel_2_checkpoint_resumes_under_tensor_parallel_4(relayout):
    """Saved by TP 2 x DP 1 on 2 ranks, resumed by TP 4 x DP 1 on 4: DCP reshards each column and
    row shard (wq: 8 rows a rank -> 4), and every rank continues with the losses of TP 2's epoch 1."""
    two, four = relayout
    tp2 = two[0]["tp2"][0]
    assert len(tp2) == 8 and two[1]["tp2"][0] == tp2
    for rank in range(4):
        losses, full_shape, local_shape = four[rank]["tp2"]
        assert full_shape == (16, 16) and local_shape == (4, 16)
        torch.testing.assert_close(losses, tp2[4:], rtol=0, atol=1e-5)


def test_fsdp_checkpoint_of_two_ranks_resumes_under_tensor_parallel_2_by_data_parallel_2(relayout):
    """Saved by FSDP2 on 2 ranks (1-D shards), resumed by TP 2 x DP 2 on 4 ranks: the data-parallel
    groups read what the 2 FSDP ranks read, so (rank 0, rank 2) continue with the FSDP ranks' losses."""
    two, four = relayout
    for rank in range(4):
        losses, full_shape, local_shape = four[rank]["fsdp2"]
        assert full_shape == (16, 16) and local_shape == (4, 16)  # 8 rows by TP, 4 of those by FSDP
        fsdp = two[rank // 2]["fsdp2"][0]  # data-parallel rank = rank // 2
        assert len(fsdp) == 8
        torch.testing.assert_close(losses, fsdp[4:], rtol=0, atol=1e-5)
