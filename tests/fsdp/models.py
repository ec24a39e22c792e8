"""A tiny block-structured model for the FSDP tests (plain nn.Modules with step methods)."""
from __future__ import annotations

import torch
from torch import nn

D = 8


class Block(nn.Module):
    def __init__(self, d: int = D) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, x):
        return x + self.fc2(torch.tanh(self.fc1(x)))


class Net(nn.Module):
    """Embedding-free toy transformer: blocks, then a head. ``training_step`` is what the loop calls."""

    def __init__(self, n_blocks: int = 3, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.blocks = nn.Sequential(*[Block() for _ in range(n_blocks)])
        self.head = nn.Linear(D, 1)

    def forward(self, x):
        return self.head(self.blocks(x))

    def training_step(self, batch, batch_idx=0):
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def validation_step(self, x):
        return self(x)


class MetaNet(Net):
    """Builds its blocks on the meta device in ``configure_model`` and shards them by hand."""

    def __init__(self) -> None:
        nn.Module.__init__(self)
        self.head = nn.Linear(D, 1)

    def configure_model(self) -> None:
        from torch.distributed.fsdp import fully_shard

        with torch.device("meta"):
            self.blocks = nn.Sequential(*[Block() for _ in range(3)])
        for block in self.blocks:
            fully_shard(block)


def data(n: int = 32, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=g)
    return x, x.sum(1, keepdim=True).sin()


def manual_module():
    """A distengine Module with manual optimization, clipping and ``self.log`` over the same net."""
    import distengine as de

    class Manual(de.Module):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False
            net = Net()
            self.blocks, self.head = net.blocks, net.head

        def forward(self, x):
            return self.head(self.blocks(x))

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            x, y = batch
            loss = nn.functional.mse_loss(self(x), y)
            opt.zero_grad()
            self.manual_backward(loss)
            self.clip_gradients(opt, gradient_clip_val=0.3, gradient_clip_algorithm="norm")
            opt.step()
            self.log("loss", loss, on_step=True, on_epoch=True, sync_dist=True)

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", nn.functional.mse_loss(self(x), y))

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=0.01)

    return Manual()
