"""Validation loaders as a CombinedLoader in sequential mode: dataloader_idx per loader, fit and validate.

style: 2.x
"""
import pytorch_lightning as pl
import torch
from conformance_report import regression_data, report
from pytorch_lightning.utilities.combined_loader import CombinedLoader
from torch import nn
from torch.utils.data import DataLoader


class Regressor(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(8, 1)
        self.val_calls = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        x, y = batch
        self.val_calls.append([batch_idx, dataloader_idx])
        self.log("val_loss", nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


if __name__ == "__main__":
    pl.seed_everything(33)
    model = Regressor()
    val = CombinedLoader({"small": DataLoader(regression_data(16, seed=1), batch_size=8),
                          "large": DataLoader(regression_data(24, seed=2), batch_size=8)}, "sequential")
    trainer = pl.Trainer(max_epochs=2, enable_progress_bar=False, log_every_n_steps=2, num_sanity_val_steps=1)
    trainer.fit(model, DataLoader(regression_data(32), batch_size=8), val)
    results = trainer.validate(model, val, verbose=False)
    report(trainer, model, validate=results, val_calls=model.val_calls)
