"""TensorBoardLogger with a name and version, next to a CSVLogger.

style: 2.x
"""
import pytorch_lightning as pl
import torch
from conformance_report import regression_data, report
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader


class Regressor(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(8, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.layer(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


if __name__ == "__main__":
    pl.seed_everything(7)
    model = Regressor()
    loggers = [TensorBoardLogger("tb", name="exp", version=3), CSVLogger("csv", name="exp")]
    trainer = pl.Trainer(max_epochs=2, logger=loggers, log_every_n_steps=1, enable_progress_bar=False)
    trainer.fit(model, DataLoader(regression_data(32), batch_size=8),
                DataLoader(regression_data(16, seed=1), batch_size=8))
    report(trainer, model, log_dir=trainer.log_dir, logger_dirs=[lg.log_dir for lg in trainer.loggers])
