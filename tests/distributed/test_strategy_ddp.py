"""DDPStrategy's options reach torch's DistributedDataParallel (2 real gloo ranks): a
communication hook with its state (bf16 gradient compression), static_graph,
gradient_as_bucket_view, bucket_cap_mb, and the "ddp_find_unused_parameters_true" name."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset

from tests.helpers import run_ranks

STEPS = 3


def counting_bf16_hook(state, bucket):
    """bf16 compression (torch's hook, on the default group), counting its calls in ``state``."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    state["calls"] += 1
    return default_hooks.bf16_compress_hook(None, bucket)


def _net():
    torch.manual_seed(0)
    return torch.nn.ModuleDict({"used": torch.nn.Linear(4, 1), "unused": torch.nn.Linear(4, 1)})


def _data(rank):
    g = torch.Generator().manual_seed(10 + rank)  # each rank its own batches: gradients differ
    return torch.randn(STEPS * 4, 4, generator=g), torch.randn(STEPS * 4, 1, generator=g)


def _rank(rank, tmp):
    import distengine as de
    from distengine.strategies import DDPStrategy

    class Net(de.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = _net()

        def forward(self, x):
            return self.net["used"](x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.5)

    class Wrapper(de.Callback):  # the model the loop trained: the strategy's DDP wrapper
        def on_train_end(self, trainer, module):
            self.ddp = trainer.strategy.model

    def fit(strategy):
        module, seen = Net(), Wrapper()
        trainer = de.Trainer(strategy=strategy, accelerator="cpu", max_steps=STEPS, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             use_distributed_sampler=False, default_root_dir=tmp, callbacks=[seen])
        trainer.fit(module, DataLoader(TensorDataset(*_data(rank)), batch_size=4))
        # the strategy's teardown dropped the wrapper: trainer.model is the module, as in Lightning
        assert trainer.model is module and trainer.strategy.model is module
        return seen.ddp, {k: v.clone() for k, v in module.net.state_dict().items()}

    state = {"calls": 0}
    ddp, hooked = fit(DDPStrategy(static_graph=True, gradient_as_bucket_view=True, bucket_cap_mb=1,
                                  ddp_comm_hook=counting_bf16_hook, ddp_comm_state=state))
    options = (ddp.static_graph, ddp.gradient_as_bucket_view, ddp.bucket_bytes_cap, state["calls"])
    ddp, unused = fit("ddp_find_unused_parameters_true")
    found_unused = ddp.find_unused_parameters
    return options, found_unused, hooked, unused, _hand(rank)


def _hand(rank):
    """The same training by hand on torch's DDP: with the bf16 hook, and without any hook."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    out = []
    for hook in (counting_bf16_hook, None):
        net = _net()
        used = DDP(net["used"])  # the unused layer is never in the graph: only `used` is wrapped
        if hook is not None:
            used.register_comm_hook({"calls": 0}, hook)
        opt = torch.optim.SGD(net.parameters(), lr=0.5)
        x, y = _data(rank)
        for i in range(STEPS):
            loss = torch.nn.functional.mse_loss(used(x[4 * i:4 * i + 4]), y[4 * i:4 * i + 4])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        out.append({k: v.detach().clone() for k, v in net.state_dict().items()})
    return out


def test_ddp_strategy_options_and_comm_hook(tmp_path):
    results = run_ranks(_rank, 2, str(tmp_path))
    for options, found_unused, hooked, unused, (hand_bf16, hand_plain) in results:
        static, as_view, cap, calls = options
        assert (static, as_view, cap) == (True, True, 1024 * 1024)
        assert calls >= STEPS  # the hook ran, with the state object the user passed
        assert found_unused is True
        for k in hand_bf16:  # bf16-compressed gradients, exactly as torch's hook gives them
            torch.testing.assert_close(hooked[k], hand_bf16[k], rtol=0, atol=0)
            torch.testing.assert_close(unused[k], hand_plain[k], rtol=1e-6, atol=1e-7)
        # the compression is visible: without the hook the weights differ
        assert any(not torch.equal(hooked[k], hand_plain[k]) for k in hand_plain if k.startswith("used"))
    assert torch.equal(results[0][2]["used.weight"], results[1][2]["used.weight"])
