"""limit_train_batches as a fraction, limit_val_batches as a count, check_val_every_n_epoch.

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
        return nn.functional.mse_loss(self.layer(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


if __name__ == "__main__":
    pl.seed_everything(16)
    model = Regressor()
    trainer = pl.Trainer(max_epochs=4, limit_train_batches=0.5, limit_val_batches=1, check_val_every_n_epoch=2,
                         log_every_n_steps=1, enable_progress_bar=False)
    trainer.fit(model, DataLoader(regression_data(64), batch_size=8),
                DataLoader(regression_data(32, seed=1), batch_size=8))
    report(trainer, model, num_training_batches=trainer.num_training_batches)
