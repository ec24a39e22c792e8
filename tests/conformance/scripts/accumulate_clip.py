"""Gradient accumulation with norm clipping and a tail batch.

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
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.2)


if __name__ == "__main__":
    pl.seed_everything(13)
    model = Regressor()
    trainer = pl.Trainer(max_epochs=2, accumulate_grad_batches=3, gradient_clip_val=0.5, log_every_n_steps=1,
                         enable_progress_bar=False)
    trainer.fit(model, DataLoader(regression_data(56), batch_size=8))
    report(trainer, model)
