"""``ModelParallelStrategy`` and HSDP in one process (a 1-rank group of the strategy's own):
the same scripts run unlaunched, with Lightning's errors for bad sizes and a module that does
not parallelize itself. The 4-rank checks are in test_model_parallel.py."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from distengine.strategies import FSDPStrategy, ModelParallelStrategy
from tests.fsdp.llama import Llama, ParallelLlama, data, reference_losses


def _fit(model, strategy, **kw):
    import distengine as de

    loader = torch.utils.data.DataLoader(data(), batch_size=4)
    trainer = de.Trainer(accelerator="cpu", strategy=strategy, max_epochs=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, **kw)
    trainer.fit(model, loader)
    return trainer


def test_one_process_tp_by_fsdp_equals_plain_training():
    model = ParallelLlama()
    _fit(model, ModelParallelStrategy())
    torch.testing.assert_close(model.losses, reference_losses(4, 8), rtol=0, atol=1e-5)
    assert model.blocks[0].attn.wq.weight.device_mesh.mesh_dim_names == ("data_parallel", "tensor_parallel")
    assert not dist.is_initialized()  # the strategy's own group is gone after the stage


def test_clipping_tensor_parallel_and_data_parallel_gradients_on_two_meshes():
    """TP layers' gradients live on the 2-D mesh, the norms' (fully_shard only) on its dp sub-mesh:
    torch's clip_grad_norm_ refused to stack their norms ("must have the same mesh")."""
    model = ParallelLlama()
    _fit(model, ModelParallelStrategy(), gradient_clip_val=0.05)
    torch.testing.assert_close(model.losses, reference_losses(4, 8, clip=0.05), rtol=0, atol=1e-5)


def test_one_process_hybrid_shard_equals_plain_training():
    model = Llama()
    strategy = FSDPStrategy(sharding_strategy="HYBRID_SHARD")
    _fit(model, strategy, accumulate_grad_batches=2)
    torch.testing.assert_close(model.losses, reference_losses(4, 8, accumulate=2), rtol=0, atol=1e-5)
    assert strategy.mesh.mesh_dim_names == ("replicate", "shard")


def test_sizes_that_do_not_multiply_to_the_world_size_are_refused():
    # a RuntimeError as in Lightning, and a ValueError (what it is)
    with pytest.raises(RuntimeError, match=r"data_parallel_size=2 x tensor_parallel_size=2 = 4, but the job has 1 "
                                         r"ranks; choose sizes that multiply to 1"):
        _fit(ParallelLlama(), ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=2))
    with pytest.raises(ValueError, match=r"replicate x shard = 4 but the job has 1 ranks"):
        _fit(Llama(), FSDPStrategy(sharding_strategy="HYBRID_SHARD", device_mesh=(2, 2)))
    assert not dist.is_initialized()


def test_module_without_configure_model_is_refused():
    with pytest.raises(TypeError, match=r"Llama must override configure_model\(\) and parallelize itself there"):
        _fit(Llama(), ModelParallelStrategy())


@pytest.mark.parametrize("kwargs, message", [
    ({"data_parallel_size": 0}, r"data_parallel_size=0\) must be 'auto' or a positive int"),
    ({"tensor_parallel_size": "2"}, r"tensor_parallel_size='2'\) must be 'auto' or a positive int"),
])
def test_bad_sizes_are_refused_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelParallelStrategy(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"sharding_strategy": "SHARD_GRAD_OP"}, r"not supported; .*reshard_after_forward=False"),
    ({"sharding_strategy": "NO_SHARD"}, r"not supported; .*strategy='ddp'"),
    ({"device_mesh": (2, 2)}, r"pass sharding_strategy='HYBRID_SHARD' with it"),
    ({"sharding_strategy": "HYBRID_SHARD", "device_mesh": (2,)}, r"must be a tuple \(replicate size, shard size\)"),
])
def test_bad_hybrid_options_are_refused_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FSDPStrategy(**kwargs)


def test_device_mesh_before_setup_says_when_it_exists():
    with pytest.raises(RuntimeError, match=r"use it in configure_model\(\), not before"):
        ModelParallelStrategy().device_mesh


def test_save_distributed_checkpoint_false_writes_one_file_of_complete_tensors(tmp_path):
    """Lightning's ``save_distributed_checkpoint=False``: complete tensors gathered into one
    ``.ckpt`` file, which loads into the plain model (no parallelism)."""
    model = ParallelLlama()
    trainer = _fit(model, ModelParallelStrategy(save_distributed_checkpoint=False))
    path = tmp_path / "full.ckpt"
    trainer.save_checkpoint(path)
    assert path.is_file()
    plain = Llama()
    plain.load_state_dict(torch.load(path, weights_only=True)["state_dict"])
    x = data().tensors[0][:3]
    with torch.no_grad():  # the trained weights: the parallel module (1 rank) computes what the plain one does
        torch.testing.assert_close(plain(x), model(x), rtol=0, atol=1e-6)
    assert not torch.equal(plain.head.weight, Llama().head.weight)


@pytest.mark.parametrize("strategy,module", [(lambda: ModelParallelStrategy(save_distributed_checkpoint=False),
                                              ParallelLlama), (lambda: FSDPStrategy(state_dict_type="full"), Llama)],
                         ids=["model_parallel", "fsdp"])
def test_full_checkpoint_holds_the_optimizer_state_as_optimizer_state_dict_writes_it(strategy, module, tmp_path):
    """As Lightning 2.6.6's full checkpoints (``FSDP.rekey_optim_state_dict(..., PARAM_ID)``): parameters
    numbered, so a plain optimizer loads it; it was keyed by parameter name (found by the 4-rank
    differential). The file still resumes under the strategy."""
    model = module()
    trainer = _fit(model, strategy())
    path = tmp_path / "full.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=True)["optimizer_states"][0]
    names = [n for n, _ in model.named_parameters()]
    assert sorted(saved["state"]) == list(range(len(names))) and saved["param_groups"][0]["params"] == \
        list(range(len(names)))
    plain = Llama()
    optimizer = plain.configure_optimizers()
    optimizer.load_state_dict(saved)  # the plain module's parameters, in the same order
    live = trainer.optimizers[0].state
    from distengine.strategies.fsdp import full_tensor

    for name, p in model.named_parameters():
        assert torch.equal(optimizer.state[dict(plain.named_parameters())[name]]["exp_avg"],
                           full_tensor(live[p]["exp_avg"])), name
    import distengine as de

    resumed = module()
    de.Trainer(accelerator="cpu", strategy=strategy(), max_epochs=2, logger=False, enable_progress_bar=False,
               enable_model_summary=False, enable_checkpointing=False).fit(
        resumed, torch.utils.data.DataLoader(data(), batch_size=4), ckpt_path=str(path))
    torch.testing.assert_close(resumed.losses, reference_losses(4, 16, epochs=2)[8:], rtol=0, atol=1e-5)


def test_validate_without_fit_parallelizes_the_module_first():
    import distengine as de

    loader = torch.utils.data.DataLoader(data(), batch_size=8)
    from torch.distributed.tensor import DTensor

    results, parallel = [], ParallelLlama()
    for model, strategy in ((parallel, ModelParallelStrategy()), (Llama(), "auto")):
        trainer = de.Trainer(accelerator="cpu", strategy=strategy, logger=False, enable_progress_bar=False,
                             enable_model_summary=False)
        results.append(trainer.validate(model, loader, verbose=False)[0]["val_loss"])
    assert isinstance(parallel.blocks[0].attn.wq.weight, DTensor)  # configure_model ran
    assert not isinstance(model.blocks[0].attn.wq.weight, DTensor)
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=1e-6)


def test_shuffled_loader_in_one_process_gets_lightnings_distributed_sampler_order():
    """Lightning 2.6.6 injects DistributedSampler(shuffle=True, seed=PL_GLOBAL_SEED) under
    ModelParallelStrategy even on one device; distengine drew RandomSampler's seed from the
    global generator there, so the batches (and the weights) differed from Lightning's."""
    from torch.distributed.fsdp import fully_shard
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    import distengine as de

    class Recorder(de.Module):
        def __init__(self):
            super().__init__()
            self.layer, self.seen = torch.nn.Linear(1, 1), []

        def configure_model(self):
            fully_shard(self, mesh=self.device_mesh["data_parallel"])

        def training_step(self, batch, batch_idx):
            self.seen.append(batch[0].flatten().long().tolist())
            return self.layer(batch[0]).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    de.seed_everything(3)
    data = TensorDataset(torch.arange(10.0).unsqueeze(1))
    model = Recorder()
    trainer = de.Trainer(accelerator="cpu", strategy=ModelParallelStrategy(), max_epochs=2, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(model, DataLoader(data, batch_size=4, shuffle=True))
    expected = []
    for epoch in range(2):
        theirs = DataLoader(data, batch_size=4, sampler=DistributedSampler(data, num_replicas=1, rank=0, seed=3))
        theirs.sampler.set_epoch(epoch)
        expected += [b[0].flatten().long().tolist() for b in theirs]
    assert model.seen == expected
