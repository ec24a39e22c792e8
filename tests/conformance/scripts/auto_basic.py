"""Automatic optimization: an MLP regressor with train and validation steps.

style: 2.x
"""
import pytorch_lightning as pl
import torch
from conformance_report import report
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Regressor(pl.LightningModule):
    def __init__(self, lr=0.05):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return TensorDataset(x, x.sum(dim=1, keepdim=True) * 0.3)


if __name__ == "__main__":
    pl.seed_everything(7)
    model = Regressor()
    trainer = pl.Trainer(max_epochs=3, log_every_n_steps=2, enable_progress_bar=False)
    trainer.fit(model, DataLoader(data(80, 0), batch_size=8), DataLoader(data(24, 1), batch_size=8))
    report(trainer, model)
