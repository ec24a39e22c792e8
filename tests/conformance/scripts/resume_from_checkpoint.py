"""Train 2 epochs, then a new Trainer resumes from last.ckpt with ckpt_path and trains to 4.

style: 2.x
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
        loss = nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=0.01)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)]


def loader():
    return DataLoader(regression_data(32), batch_size=8)


if __name__ == "__main__":
    pl.seed_everything(22)
    first = Regressor()
    pl.Trainer(max_epochs=2, callbacks=[ModelCheckpoint(dirpath="ckpts", save_last=True)],
               enable_progress_bar=False, logger=False).fit(first, loader())
    model = Regressor()
    trainer = pl.Trainer(max_epochs=4, enable_progress_bar=False, log_every_n_steps=2)
    trainer.fit(model, loader(), ckpt_path="ckpts/last.ckpt")
    report(trainer, model, lr=trainer.optimizers[0].param_groups[0]["lr"])
