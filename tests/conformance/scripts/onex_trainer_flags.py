"""1.x Trainer flags: gpus=None, track_grad_norm, reload_dataloaders_every_n_epochs.

style: 1.x
"""
import pytorch_lightning as pl
import torch
from conformance_report import regression_data, report
from torch import nn
from torch.utils.data import DataLoader


class Regressor(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(8, 1)
        self.loader_calls = 0

    def train_dataloader(self):
        self.loader_calls += 1
        return DataLoader(regression_data(24 + 8 * self.loader_calls), batch_size=8)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


if __name__ == "__main__":
    pl.seed_everything(33)
    model = Regressor()
    trainer = pl.Trainer(max_epochs=3, gpus=None, track_grad_norm=2,
                         reload_dataloaders_every_n_epochs=1, log_every_n_steps=1, enable_progress_bar=False)
    trainer.fit(model)
    report(trainer, model, loader_calls=model.loader_calls)
