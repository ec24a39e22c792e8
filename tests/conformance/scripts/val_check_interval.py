"""Validation twice per epoch (val_check_interval=0.5) with limit_val_batches.

style: 2.x
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
        self.validations = 0

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.layer(x), y))

    def on_validation_epoch_end(self):
        self.validations += 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


if __name__ == "__main__":
    pl.seed_everything(15)
    model = Regressor()
    trainer = pl.Trainer(max_epochs=2, val_check_interval=0.5, limit_val_batches=2, num_sanity_val_steps=0,
                         log_every_n_steps=2, enable_progress_bar=False)
    trainer.fit(model, DataLoader(regression_data(64), batch_size=8),
                DataLoader(regression_data(40, seed=1), batch_size=8))
    report(trainer, model, validations=model.validations)
