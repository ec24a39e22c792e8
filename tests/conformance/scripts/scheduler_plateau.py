"""ReduceLROnPlateau monitoring a validation metric, stepped each epoch.

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
        opt = torch.optim.SGD(self.parameters(), lr=0.5)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val_loss"}}


if __name__ == "__main__":
    pl.seed_everything(9)
    model = Regressor()
    trainer = pl.Trainer(max_epochs=5, enable_progress_bar=False, log_every_n_steps=2)
    trainer.fit(model, DataLoader(regression_data(32), batch_size=8),
                DataLoader(regression_data(16, seed=1), batch_size=8))
    report(trainer, model, lr=trainer.optimizers[0].param_groups[0]["lr"])
