"""Manual optimization and the 1.x several-optimizer mode on two real gloo ranks (issue 10,
items 1 and 6), compared with loops written by hand on torch's DistributedDataParallel."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from tests.helpers import run_ranks

N, BS, EPOCHS = 32, 4, 2  # 16 samples per rank: 4 batches per epoch


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(N, 4, generator=g), torch.randn(N, 1, generator=g)


def _nets():
    torch.manual_seed(0)
    g = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    d = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    return g, d


def _loss(g, d, x, y, which):
    if which == "one":
        return torch.nn.functional.mse_loss(d(g(x)), y)
    if which == "g":
        return torch.nn.functional.mse_loss(d(g(x)), y)
    return torch.nn.functional.mse_loss(d(g(x).detach()), -y)


def _engine(rank, tmp, mode, find_unused):
    import distengine as de

    class Module(de.LightningModule):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = mode == "one_x"
            self.g, self.d = _nets()

        def training_step(self, batch, batch_idx, *idx):
            x, y = batch
            if mode == "one_x":  # 1.x: called once per optimizer, the other one frozen
                return _loss(self.g, self.d, x, y, "gd"[idx[0]])
            if mode == "one":
                opt = self.optimizers()
                opt.zero_grad()
                self.manual_backward(_loss(self.g, self.d, x, y, "one"))
                opt.step()
                return
            for opt, which in zip(self.optimizers(), "gd"):
                self.toggle_optimizer(opt)
                opt.zero_grad()
                self.manual_backward(_loss(self.g, self.d, x, y, which))
                opt.step()
                self.untoggle_optimizer(opt)

        def configure_optimizers(self):
            if mode == "one":
                return torch.optim.SGD(self.parameters(), lr=0.1)
            return [torch.optim.SGD(self.g.parameters(), lr=0.1), torch.optim.SGD(self.d.parameters(), lr=0.1)]

    if mode == "one_x":  # the 1.x signature, taken by the adapter only when it names optimizer_idx
        step = Module.training_step
        Module.training_step = lambda self, batch, batch_idx, optimizer_idx: step(self, batch, batch_idx,
                                                                                   optimizer_idx)
    module = Module()
    trainer = de.Trainer(max_epochs=EPOCHS, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, default_root_dir=tmp, find_unused_parameters=find_unused)
    trainer.fit(module, DataLoader(TensorDataset(*_data()), batch_size=BS))
    return trainer.global_step, [p.detach().clone() for p in module.parameters()]


def _by_hand(rank, mode, find_unused):
    """The same training with torch's DDP: one forward (through DDP) per backward."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("gloo")
    g, d = _nets()

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.g, self.d = g, d

        def forward(self, x, y, which):
            return _loss(self.g, self.d, x, y, which)

    model = DDP(Net(), find_unused_parameters=find_unused)
    x, y = _data()
    x, y = x[rank::2], y[rank::2]  # the unshuffled distributed sampler's shard
    if mode == "one":
        steps = [("one", torch.optim.SGD(model.parameters(), lr=0.1), [])]
    else:
        steps = [("g", torch.optim.SGD(g.parameters(), lr=0.1), list(d.parameters())),
                 ("d", torch.optim.SGD(d.parameters(), lr=0.1), list(g.parameters()))]
    for _ in range(EPOCHS):
        for b in range(N // 2 // BS):
            xb, yb = x[b * BS:(b + 1) * BS], y[b * BS:(b + 1) * BS]
            for which, opt, frozen in steps:
                for p in frozen:
                    p.requires_grad_(False)
                opt.zero_grad()
                model(xb, yb, which).backward()
                opt.step()
                for p in frozen:
                    p.requires_grad_(True)
    return [p.detach().clone() for p in [*g.parameters(), *d.parameters()]]


@pytest.mark.parametrize("mode, find_unused", [("one", False), ("one", True), ("gan", True), ("one_x", False)])
def test_two_rank_optimization_equals_hand_written_ddp(tmp_path, mode, find_unused):
    """Manual optimization (one optimizer; a toggled GAN pair, which needs
    find_unused_parameters=True as in Lightning) and the 1.x mode (which sets it) give the
    weights of a hand-written DDP loop, equal on both ranks."""
    engine = run_ranks(_engine, 2, str(tmp_path), mode, find_unused)
    hand = run_ranks(_by_hand, 2, "one" if mode == "one" else "gan", mode != "one" or find_unused)
    batches = EPOCHS * N // 2 // BS
    # Lightning 2.6.6 (manual) and 1.9.5 (1.x automatic): +1 per optimizer step
    assert [s for s, _ in engine] == [batches if mode == "one" else 2 * batches] * 2
    (_, rank0), (_, rank1) = engine
    assert all(torch.equal(a, b) for a, b in zip(hand[0], hand[1]))
    for a, b, c in zip(rank0, rank1, hand[0]):
        assert torch.equal(a, b) and torch.equal(a, c)
