"""Sanity check isolation: its random draws and its logged values do not reach training.

A model with dropout, a validation step that draws random numbers (test-time noise), two
sanity batches, and a step-triggered ModelCheckpoint that monitors val_loss. Lightning runs the
sanity check in an isolated RNG state and forgets its metrics, so the dropout masks, the draw
after the fit and the checkpoint names match a run without the check. The training loader is
shuffled: its permutations are drawn from torch's global generator, after the sanity check.

style: 2.x
"""
import os

import pytorch_lightning as pl
import torch
from conformance_report import regression_data, report
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader


class Regressor(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        noisy = x + 0.01 * torch.randn_like(x)
        self.log("val_loss", nn.functional.mse_loss(self.net(noisy), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


if __name__ == "__main__":
    pl.seed_everything(11)
    model = Regressor()
    ckpt = ModelCheckpoint(monitor="val_loss", every_n_train_steps=3, save_top_k=-1,
                           filename="{step}-{val_loss:.3f}")
    trainer = pl.Trainer(max_epochs=2, num_sanity_val_steps=2, callbacks=[ckpt], enable_progress_bar=False,
                         log_every_n_steps=2)
    trainer.fit(model, DataLoader(regression_data(48), batch_size=8, shuffle=True),
                DataLoader(regression_data(16, seed=1), batch_size=8))
    saved = sorted(f for f in os.listdir(ckpt.dirpath) if f.endswith(".ckpt"))
    report(trainer, model, saved=saved, after_draw=float(torch.rand(())))
