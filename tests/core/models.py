"""Small models and data shared by the core tests."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset

import distengine as de


def regression_data(n: int = 96, d: int = 6, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = x @ torch.randn(d, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


def make_net(d: int = 6, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(d, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


class Regressor(de.Module):
    def __init__(self, net: torch.nn.Module | None = None, lr: float = 0.05, optimizer: str = "adam"):
        super().__init__()
        self.net = net if net is not None else make_net()
        self.lr, self.optimizer_name = lr, optimizer

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        if self.optimizer_name == "sgd":
            return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def quiet_trainer(tmp_path, **kw) -> de.Trainer:
    kw.setdefault("logger", False)
    # no default checkpoint; a ModelCheckpoint the test passes is kept (with enable_checkpointing=False
    # the Trainer would refuse it, as Lightning does)
    given = kw.get("callbacks") or []
    given = given if isinstance(given, (list, tuple)) else [given]
    kw.setdefault("enable_checkpointing", None if any(isinstance(c, de.callbacks.ModelCheckpoint) for c in given)
                  else False)
    kw.setdefault("enable_progress_bar", False)
    kw.setdefault("accelerator", "cpu")
    return de.Trainer(default_root_dir=str(tmp_path), **kw)


def loader(ds, batch_size=16, **kw) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size, **kw)
