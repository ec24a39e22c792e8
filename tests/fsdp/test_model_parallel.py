"""2-D parallelism (issue 23): ``ModelParallelStrategy`` (tensor parallel x FSDP2) and HSDP
(``FSDPStrategy(sharding_strategy="HYBRID_SHARD", device_mesh=(replicate, shard))``).

One job of 4 real gloo ranks runs everything on a small Llama-style model (tests/fsdp/llama.py):

* TP 2 x DP 2 through the Trainer (gradient clipping on), 2 epochs with a sharded (DCP)
  checkpoint after each: per-step
  losses equal a hand-written loop applying the same ``parallelize_module`` plan, and (averaged
  over the data-parallel groups) one process on the global batches;
* a fresh Trainer resumed from the epoch-0 checkpoint on the same mesh ends with weights
  ``torch.equal`` to the uninterrupted run's;
* that checkpoint resumed in another layout: plain FSDP2 on the 4 ranks, and (in the test
  process) a plain module in one process, both continuing with the same losses;
* then (2 ranks, a job of its own) that checkpoint resumed under DDP, continuing with the same
  losses, and ``distengine checkpoint consolidate`` of the last one loading into the plain module;
* HSDP 2 x 2 with gradient accumulation: losses equal one process, replicas end equal, and the
  gradients are all-reduced across replicas once per optimizer step (not per micro-batch).
"""
from __future__ import annotations

import os

import pytest
import torch
from torch.nn import functional as F

from tests.fsdp.llama import Llama, ParallelLlama, data, parallelize, reference_losses
from tests.helpers import run_ranks

pytestmark = pytest.mark.slow  # one 4-rank job: ~40 s on a loaded 2-core machine

BATCH = 4  # per data-parallel group: a global batch of 8, 4 steps per epoch
CLIP = 0.05  # below the gradient norm of every step: clipping changes each step


def _trainer(tmp, strategy, **kw):
    import distengine as de

    kw.setdefault("enable_checkpointing", False)
    return de.Trainer(accelerator="cpu", strategy=strategy, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp, **kw)


def _full_state(module):
    """Complete tensors (a collective: every rank calls it)."""
    from torch.distributed.tensor import DTensor

    return {n: (t.full_tensor() if isinstance(t, DTensor) else t).detach().clone()
            for n, t in module.state_dict().items()}


def _local_state(module):
    from torch.distributed.tensor import DTensor

    return {n: (t.to_local() if isinstance(t, DTensor) else t).detach().clone() for n, t in module.state_dict().items()}


def _tensor_parallel(rank, tmp, out):
    from distengine.callbacks import ModelCheckpoint
    from distengine.strategies import ModelParallelStrategy

    loader = torch.utils.data.DataLoader(data(), batch_size=BATCH)
    # 9 validation samples: the data-parallel groups run 2 and 1 batches (uneven, as evaluation shards)
    val = torch.utils.data.DataLoader(torch.utils.data.Subset(data(), range(9)), batch_size=4)
    model, strategy = ParallelLlama(), ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=2)
    ckpts = os.path.join(tmp, "ckpts")
    _trainer(tmp, strategy, max_epochs=2, enable_checkpointing=True, gradient_clip_val=CLIP,
             callbacks=[ModelCheckpoint(dirpath=ckpts, save_top_k=-1)]).fit(model, loader, val)
    mesh = strategy.device_mesh
    first = os.path.join(ckpts, "epoch=0-step=4.ckpt")
    out.update(full_state=_full_state(model), last_path=os.path.join(ckpts, "epoch=1-step=8.ckpt"))
    out.update(tp_losses=model.losses, val_loss=float(model.trainer.callback_metrics["val_loss"]),
               tp_state=_local_state(model), ckpts=sorted(os.listdir(ckpts)),
               first_ckpt=sorted(os.listdir(first)),
               dp_rank=mesh["data_parallel"].get_local_rank(), tp_rank=mesh["tensor_parallel"].get_local_rank(),
               wq_mesh=model.blocks[0].attn.wq.weight.device_mesh.mesh_dim_names,
               wq_placements=[(type(p).__name__, p.dim) for p in model.blocks[0].attn.wq.weight.placements])
    resumed = ParallelLlama()
    _trainer(tmp, ModelParallelStrategy(2, 2), max_epochs=2, gradient_clip_val=CLIP).fit(
        resumed, loader, ckpt_path=first)
    out.update(resumed_losses=resumed.losses, resumed_state=_local_state(resumed), first_path=first)


def _hand_loop(rank, out):
    """The same plan applied by hand, each data-parallel group on its half of every global batch."""
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("data_parallel", "tensor_parallel"))
    model = Llama()
    parallelize(model, mesh)
    opt = model.configure_optimizers()
    x, y = data().tensors
    mine = list(range(mesh["data_parallel"].get_local_rank(), len(x), 2))  # DistributedSampler, shuffle=False
    losses = []
    for step in range(len(mine) // BATCH):
        b = mine[step * BATCH:(step + 1) * BATCH]
        loss = F.mse_loss(model(x[b]), y[b])
        loss.backward()
        norm = sum(p.grad.full_tensor().pow(2).sum() for p in model.parameters()).sqrt()  # every shard, every mesh
        for p in model.parameters():
            p.grad.mul_((CLIP / (norm + 1e-6)).clamp(max=1.0))
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    out["hand_losses"] = losses


def _hybrid(rank, tmp, out):
    import torch.distributed as dist

    from distengine.strategies import FSDPStrategy
    from tests.fsdp.llama import Block

    loader = torch.utils.data.DataLoader(data(), batch_size=2)  # 4 replicas x shards: global micro-batch 8
    model = Llama()
    strategy = FSDPStrategy(sharding_strategy="HYBRID_SHARD", device_mesh=(2, 2), auto_wrap_policy={Block})
    calls, all_reduce = [], dist.all_reduce

    def counting(tensor, *args, **kwargs):  # FSDP2 all-reduces each unit's gradient across replicas with it
        calls.append(kwargs.get("group", args[1] if len(args) > 1 else None))
        return all_reduce(tensor, *args, **kwargs)

    dist.all_reduce = counting
    try:
        _trainer(tmp, strategy, max_epochs=1, accumulate_grad_batches=2).fit(model, loader)
    finally:
        dist.all_reduce = all_reduce
    replicate = strategy.mesh["replicate"].get_group()
    out.update(hsdp_losses=model.losses, hsdp_state=_local_state(model),
               hsdp_mesh=(strategy.mesh.mesh_dim_names, tuple(strategy.mesh.shape)),
               replica_all_reduces=sum(g is replicate for g in calls))


def _fsdp_from_tp_checkpoint(rank, tmp, out):
    """The TP 2 x DP 2 checkpoint resumed by plain FSDP2 over the 4 ranks (another layout)."""
    from distengine.strategies import FSDPStrategy

    model = Llama()
    _trainer(tmp, FSDPStrategy(), max_epochs=2, gradient_clip_val=CLIP).fit(
        model, torch.utils.data.DataLoader(data(), batch_size=BATCH // 2), ckpt_path=out["first_path"])
    out["fsdp_resumed_losses"] = model.losses


def _ddp_from_tp_checkpoint(rank, tmp, path):
    """The TP 2 x DP 2 checkpoint resumed by DDP over 2 ranks (global batch 8: 4 a rank)."""
    model = Llama()
    _trainer(tmp, "ddp", max_epochs=2, gradient_clip_val=CLIP).fit(
        model, torch.utils.data.DataLoader(data(), batch_size=BATCH), ckpt_path=path)
    return model.losses


def _predict(rank, tmp, out):
    """``trainer.predict`` on TP 2 x DP 2 (20 samples: 10 a data-parallel group, batches of 4, 4, 2),
    and the strategy's gather of per-rank outputs."""
    from distengine.strategies import ModelParallelStrategy

    strategy = ModelParallelStrategy(2, 2)
    loader = torch.utils.data.DataLoader(data().tensors[0][:20], batch_size=4)
    out["predictions"] = [p.detach().clone() for p in _trainer(tmp, strategy).predict(ParallelLlama(), loader)]
    mesh = strategy.device_mesh
    mine = f"dp{mesh['data_parallel'].get_local_rank()}-tp{mesh['tensor_parallel'].get_local_rank()}"
    out["gathered"] = strategy.gather_predictions([mine + "-a", mine + "-b"])


def _job(rank, tmp):
    out: dict[str, object] = {}
    _predict(rank, tmp, out)
    _tensor_parallel(rank, tmp, out)
    _fsdp_from_tp_checkpoint(rank, tmp, out)
    _hand_loop(rank, out)
    _hybrid(rank, tmp, out)
    return out


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    return run_ranks(_job, 4, str(tmp_path_factory.mktemp("model_parallel")), timeout=240)


def test_mesh_layout_and_tensor_parallel_placements(job):
    assert [(r["dp_rank"], r["tp_rank"]) for r in job] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    # FSDP2 on dp over colwise on tp: dim 0 split twice (FSDP's part strided over the tp split)
    assert job[0]["wq_mesh"] == ("data_parallel", "tensor_parallel")
    assert job[0]["wq_placements"] == [("_StridedShard", 0), ("Shard", 0)]


def test_tp_dp_losses_equal_hand_written_loop_and_one_process(job):
    for r in job:
        assert len(r["tp_losses"]) == 8
        torch.testing.assert_close(r["tp_losses"][:4], r["hand_losses"], rtol=0, atol=1e-5)
    assert job[0]["tp_losses"] == job[1]["tp_losses"]  # one tensor-parallel group reads the same batches
    assert len({r["val_loss"] for r in job}) == 1 and 0 < job[0]["val_loss"] < 10
    mean = [(a + b) / 2 for a, b in zip(job[0]["tp_losses"], job[2]["tp_losses"])]
    torch.testing.assert_close(mean, reference_losses(2 * BATCH, 8, epochs=2, clip=CLIP), rtol=0, atol=1e-5)


def test_sharded_checkpoint_resumes_exactly_on_the_same_mesh(job):
    assert {"epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt"} <= set(job[0]["ckpts"])
    # a DCP directory: one shard file per rank, DCP's index, the non-tensor state
    assert {".metadata", "meta.pt", *(f"__{r}_0.distcp" for r in range(4))} <= set(job[0]["first_ckpt"])
    for r in job:
        assert r["resumed_losses"] == r["tp_losses"][4:]
        assert r["resumed_state"].keys() == r["tp_state"].keys()
        for name, t in r["tp_state"].items():
            assert torch.equal(r["resumed_state"][name], t), name


def test_hybrid_shard_with_accumulation_equals_one_process(job):
    assert job[0]["hsdp_mesh"] == (("replicate", "shard"), (2, 2))
    mean = [sum(r["hsdp_losses"][i] for r in job) / 4 for i in range(4)]
    torch.testing.assert_close(mean, reference_losses(8, 4, accumulate=2), rtol=0, atol=1e-5)
    # 3 shard units (2 blocks, the root) x 2 optimizer steps: one all-reduce per unit and step, not per micro-batch
    assert [r["replica_all_reduces"] for r in job] == [6] * 4
    for a, b in ((0, 2), (1, 3)):  # the same shard on both replicas: gradients were all-reduced across them
        for name, t in job[a]["hsdp_state"].items():
            assert torch.equal(t, job[b]["hsdp_state"][name]), name


def test_tp_dp_checkpoint_resumes_in_one_process_without_parallelism(job, tmp_path):
    """DCP reshards: the TP 2 x DP 2 checkpoint (model and AdamW state) resumes a plain module in
    one process, which continues as the 4 ranks did (global batch 8: both data-parallel halves)."""
    import distengine as de

    plain = Llama()
    de.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
               enable_checkpointing=False, gradient_clip_val=CLIP, default_root_dir=str(tmp_path)).fit(
        plain, torch.utils.data.DataLoader(data(), batch_size=2 * BATCH), ckpt_path=job[0]["first_path"])
    mean = [(a + b) / 2 for a, b in zip(job[0]["tp_losses"][4:], job[2]["tp_losses"][4:])]
    torch.testing.assert_close(plain.losses, mean, rtol=0, atol=1e-5)


def test_tp_dp_checkpoint_resumes_under_fsdp_on_four_ranks(job):
    """Another layout on the same ranks: 1-D FSDP2 over 4 ranks (global batch 8 again) continues as TP x DP did."""
    mean_tp = [(a + b) / 2 for a, b in zip(job[0]["tp_losses"][4:], job[2]["tp_losses"][4:])]
    mean_fsdp = [sum(r["fsdp_resumed_losses"][i] for r in job) / 4 for i in range(4)]
    torch.testing.assert_close(mean_fsdp, mean_tp, rtol=0, atol=1e-5)


def test_tp_dp_checkpoint_resumes_under_ddp_on_two_ranks(job, tmp_path):
    """Fewer ranks and no sharding: DDP over 2 ranks (2 processes, after the 4-rank job) continues as TP x DP did."""
    ddp = run_ranks(_ddp_from_tp_checkpoint, 2, str(tmp_path), job[0]["first_path"], timeout=180)
    mean_tp = [(a + b) / 2 for a, b in zip(job[0]["tp_losses"][4:], job[2]["tp_losses"][4:])]
    assert len(ddp[0]) == len(ddp[1]) == 4
    torch.testing.assert_close([(a + b) / 2 for a, b in zip(*ddp)], mean_tp, rtol=0, atol=1e-5)


def test_consolidated_tp_dp_checkpoint_loads_into_the_plain_module(job, tmp_path):
    """``distengine checkpoint consolidate`` (the console script) of the last TP 2 x DP 2 checkpoint: one file
    whose weights are the gathered weights of the end of training, loading into the unparallelized module."""
    import subprocess
    import sys
    from pathlib import Path

    dst = tmp_path / "full.ckpt"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISTENGINE_", "TORCHELASTIC_"))}
    out = subprocess.run([str(Path(sys.executable).parent / "distengine"), "checkpoint", "consolidate",
                          job[0]["last_path"], str(dst)], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert dst.is_file()
    plain = Llama()
    plain.load_state_dict(torch.load(dst, weights_only=True)["state_dict"])
    full = job[0]["full_state"]
    assert plain.state_dict().keys() == full.keys()
    for name, t in plain.state_dict().items():
        assert torch.equal(t, full[name]), name
    assert all(torch.equal(t, job[3]["full_state"][name]) for name, t in full.items())  # every rank gathered the same


def test_gather_predictions_keeps_one_copy_per_data_parallel_group(job):
    """The ranks of a tensor-parallel group predict the same batches: their first rank's outputs,
    data-parallel group by group (dataset order: evaluation shards are contiguous)."""
    assert [r["gathered"] for r in job] == [["dp0-tp0-a", "dp0-tp0-b", "dp1-tp0-a", "dp1-tp0-b"]] * 4


def test_predict_returns_each_batch_once_in_dataset_order(job):
    """Found by the 4-rank differential: under TP 2 x DP 2 predict returned 12 batches for 6 (each
    twice, from both ranks of a tensor-parallel group)."""
    want = Llama()(data().tensors[0][:20]).detach()
    for r in job:
        assert [len(p) for p in r["predictions"]] == [4, 4, 2, 4, 4, 2]
        torch.testing.assert_close(torch.cat(r["predictions"]), want, rtol=0, atol=1e-5)
