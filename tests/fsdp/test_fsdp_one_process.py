"""FSDP in one process, without a launcher (a device mesh of one rank, as Lightning and
torchtitan allow): the Trainer's strategy starts a 1-rank process group of its own and
destroys it at the end of each stage. Runs in the test process itself."""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist

import distengine as de
from distengine.strategies.fsdp import FSDPStrategy
from tests.fsdp.models import Block, Net, data, manual_module

KW = {"accelerator": "cpu", "logger": False, "enable_progress_bar": False, "enable_model_summary": False}


@pytest.fixture(autouse=True)
def no_group_left():
    assert not dist.is_initialized()
    yield
    leaked = dist.is_initialized()
    if leaked:
        dist.destroy_process_group()
    assert not leaked, "the 1-rank process group outlived the stage"


def _full(model):
    from distengine.strategies.fsdp import full_tensor
    return {k: full_tensor(v).detach().clone() for k, v in model.state_dict().items()}


def _fit_manual(tmp, strategy):
    x, y = data(64)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    model = manual_module()
    trainer = de.Trainer(max_epochs=1, strategy=strategy, enable_checkpointing=False, default_root_dir=tmp, **KW)
    trainer.fit(model, loader)
    return trainer, model


@pytest.mark.parametrize("strategy", ["fsdp", FSDPStrategy(auto_wrap_policy={Block}, cpu_offload=True),
                                      FSDPStrategy(auto_wrap_policy={Block}, activation_checkpointing_policy={Block},
                                                   reshard_after_forward=False)],
                         ids=["fsdp", "offload", "checkpointing-keep"])
def test_one_process_fit_matches_single_device(tmp_path, strategy):
    """Manual optimization with norm clipping and ``self.log``: the same loss and weights as
    the single-device strategy; then validation in the same Trainer (a new 1-rank group)."""
    ref_trainer, ref = _fit_manual(str(tmp_path / "ref"), "auto")
    trainer, model = _fit_manual(str(tmp_path / "fsdp"), strategy)
    assert not dist.is_initialized(), "the strategy's own group is destroyed at the end of fit"
    from torch.distributed.fsdp import FSDPModule

    assert isinstance(model, FSDPModule) and trainer.global_step == ref_trainer.global_step == 4
    assert float(trainer.callback_metrics["loss_epoch"]) == pytest.approx(
        float(ref_trainer.callback_metrics["loss_epoch"]), rel=1e-5)
    weights = _full(model)
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(weights[k], v, rtol=1e-5, atol=1e-6)
    if isinstance(strategy, FSDPStrategy) and strategy.cpu_offload:
        assert all(p.device.type == "cpu" for p in model.parameters())
    x, y = data(16)
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    got = trainer.validate(model, val)[0]["val_loss"]
    want = ref_trainer.validate(ref, val)[0]["val_loss"]
    assert got == pytest.approx(want, rel=1e-5)


def test_one_process_matches_a_hand_written_fully_shard_loop(tmp_path):
    """The strategy's step equals ``fully_shard`` by hand on a 1-rank mesh (each block, then the root)."""
    from torch.distributed.fsdp import fully_shard

    from distengine.distributed import setup

    x, y = data(64)
    assert setup.init_single_process_group(torch.device("cpu"), 30)
    try:
        model = Net()
        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
        opt = torch.optim.AdamW(model.parameters(), lr=0.01)
        losses = []
        for i in range(4):
            loss = model.training_step((x[i * 16:(i + 1) * 16], y[i * 16:(i + 1) * 16]))
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
    finally:
        setup.destroy_single_process_group()

    class Auto(de.Module):
        def __init__(self):
            super().__init__()
            net = Net()
            self.blocks, self.head = net.blocks, net.head
            self.losses = []

        def forward(self, x):
            return self.head(self.blocks(x))

        def training_step(self, batch, batch_idx):
            loss = torch.nn.functional.mse_loss(self(batch[0]), batch[1])
            self.losses.append(loss.item())
            return loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=0.01)

    module = Auto()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    de.Trainer(max_epochs=1, strategy=FSDPStrategy(auto_wrap_policy={Block}), enable_checkpointing=False,
               default_root_dir=str(tmp_path), **KW).fit(module, loader)
    assert module.losses == pytest.approx(losses, rel=1e-6)


def test_one_process_sharded_save_and_resume(tmp_path):
    """An async sharded checkpoint written in one process resumes exactly: 3 steps, save,
    3 more in a new Trainer == 6 uninterrupted steps (dropout, AdamW, an LR schedule)."""
    from torch.utils.data import DataLoader

    from distengine.callbacks import ModelCheckpoint
    from tests.fsdp.scripts.fsdp_train import Block as DropBlock
    from tests.fsdp.scripts.fsdp_train import Indexed
    from tests.fsdp.scripts.fsdp_train import Net as DropNet

    def run(root, max_steps, ckpt_path=None, save=False):
        de.seed_everything(7)
        loader = DataLoader(Indexed(48), batch_size=4, shuffle=True)
        callbacks = [ModelCheckpoint(every_n_train_steps=3, save_top_k=-1, async_save=True)] if save else []
        trainer = de.Trainer(max_steps=max_steps, strategy=FSDPStrategy(auto_wrap_policy={DropBlock}),
                             default_root_dir=str(tmp_path / root), callbacks=callbacks,
                             enable_checkpointing=save, **KW)
        model = DropNet()
        trainer.fit(model, loader, ckpt_path=ckpt_path)
        return trainer, _full(model)

    _, whole = run("whole", 6)
    trainer, _ = run("first", 3, save=True)
    path = tmp_path / "first" / "checkpoints" / "epoch=0-step=3.ckpt"
    assert os.path.isdir(path)
    assert sorted(os.listdir(path)) == [".metadata", "__0_0.distcp", "checksums.json", "meta.pt"]
    resumed, weights = run("second", 6, ckpt_path=str(path))
    assert resumed.global_step == 6
    differ = [k for k, v in whole.items() if not torch.equal(v, weights[k])]
    assert not differ, f"resumed weights differ in {differ}"


def test_offload_on_cuda_asks_for_gloo_beside_nccl(monkeypatch):
    """cpu_offload keeps gradients and shards on the host: on CUDA the default group must
    reduce CPU tensors too (clipping, full_tensor, the fp16 inf check)."""
    from distengine.distributed import setup
    from distengine.distributed.env import ClusterEnv

    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert setup.process_group_backend(cpu) == setup.process_group_backend(cpu, cpu_offload=True) == "gloo"
    assert setup.process_group_backend(cuda) == "nccl"
    assert setup.process_group_backend(cuda, cpu_offload=True) == "cpu:gloo,cuda:nccl"
    for offload, want in ((False, "nccl"), (True, "cpu:gloo,cuda:nccl")):
        strategy = FSDPStrategy(cpu_offload=offload)
        strategy.root_device = cuda
        assert strategy.backend() == want
        calls = []
        monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: calls.append((backend, kw)))
        monkeypatch.setenv("MASTER_PORT", "29999")  # init_process_group sets both when unset
        monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
        setup.init_process_group(ClusterEnv(rank=1, world_size=2, master_port=29999), cuda, 30,
                                 backend=strategy.backend())
        assert [c[0] for c in calls] == [want] and calls[0][1]["device_id"] == cuda
        calls.clear()
        setup.init_single_process_group(cuda, 30, backend=strategy.backend())
        assert [c[0] for c in calls] == [want] and calls[0][1]["world_size"] == 1
