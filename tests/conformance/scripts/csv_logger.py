"""CSVLogger with step and epoch metrics.

style: 2.x
"""
import pytorch_lightning as pl
import torch
from conformance_report import regression_data, report
from pytorch_lightning.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader


class Regressor(pl.LightningModule):
    def __init__(self, lr=0.03):
        super().__init__()
        self.save_hyperparameters()
        self.layer = nn.Linear(8, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.layer(x), y)
        self.log("loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


if __name__ == "__main__":
    pl.seed_everything(6)
    model = Regressor()
    trainer = pl.Trainer(max_epochs=3, logger=CSVLogger("logs", name="csv_run"), log_every_n_steps=2,
                         enable_progress_bar=False)
    trainer.fit(model, DataLoader(regression_data(40), batch_size=8),
                DataLoader(regression_data(16, seed=1), batch_size=8))
    report(trainer, model, log_dir=trainer.log_dir)
