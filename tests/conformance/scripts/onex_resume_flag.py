"""1.x: Trainer(resume_from_checkpoint=...) continuing a finished run.

style: 1.x
"""
import pytorch_lightning as pl
import torch
from conformance_report import regression_data, report
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader


class Regressor(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(8, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


if __name__ == "__main__":
    pl.seed_everything(34)
    data = DataLoader(regression_data(32), batch_size=8)
    first = pl.Trainer(max_epochs=2, callbacks=[ModelCheckpoint(dirpath="ckpts", save_last=True)],
                       logger=False, enable_progress_bar=False)
    first.fit(Regressor(), data)
    model = Regressor()
    trainer = pl.Trainer(max_epochs=3, resume_from_checkpoint="ckpts/last.ckpt", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(model, data)
    report(trainer, model)
