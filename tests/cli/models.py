"""A tiny regression Module and DataModule for the CLI tests (deterministic data, CPU)."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset

import distengine as de


class Regressor(de.Module):
    """A two-layer MLP; ``hidden_dim`` and ``lr`` come from the CLI."""

    def __init__(self, hidden_dim: int = 8, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, hidden_dim), torch.nn.Tanh(), torch.nn.Linear(hidden_dim, 1))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self(x), y))

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_loss", torch.nn.functional.mse_loss(self(x), y))

    def predict_step(self, batch, batch_idx):
        return self(batch[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class RegressionData(de.DataModule):
    """64 fixed samples of ``y = x @ w``; the same on every rank and in every run."""

    def __init__(self, batch_size: int = 8, num_samples: int = 64) -> None:
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str) -> None:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(self.hparams.num_samples, 4, generator=g)
        self.dataset = TensorDataset(x, x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]))

    def train_dataloader(self):
        return DataLoader(self.dataset, batch_size=self.hparams.batch_size)

    def val_dataloader(self):
        return DataLoader(self.dataset, batch_size=self.hparams.batch_size)

    def test_dataloader(self):
        return DataLoader(self.dataset, batch_size=self.hparams.batch_size)

    def predict_dataloader(self):
        return DataLoader(self.dataset, batch_size=self.hparams.batch_size)
