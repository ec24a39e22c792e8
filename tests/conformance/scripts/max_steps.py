"""max_steps ending training in the middle of an epoch, with validation.

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

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


if __name__ == "__main__":
    pl.seed_everything(14)
    model = Regressor()
    trainer = pl.Trainer(max_steps=7, log_every_n_steps=2, enable_progress_bar=False)
    trainer.fit(model, DataLoader(regression_data(40), batch_size=8),
                DataLoader(regression_data(16, seed=1), batch_size=8))
    report(trainer, model)
