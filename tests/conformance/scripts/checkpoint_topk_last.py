"""ModelCheckpoint with monitor, top-k, save_last and a filename template.

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
        self.layer = nn.Linear(8, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.02)


if __name__ == "__main__":
    pl.seed_everything(4)
    model = Regressor()
    ckpt = ModelCheckpoint(monitor="val_loss", save_top_k=2, save_last=True,
                           filename="{epoch}-{val_loss:.3f}")
    trainer = pl.Trainer(max_epochs=4, callbacks=[ckpt], enable_progress_bar=False)
    trainer.fit(model, DataLoader(regression_data(48), batch_size=8),
                DataLoader(regression_data(16, seed=1), batch_size=8))
    report(trainer, model, best=os.path.basename(ckpt.best_model_path), best_score=float(ckpt.best_model_score),
           kth=os.path.basename(ckpt.kth_best_model_path),
           top_k=sorted(os.path.basename(p) for p in ckpt.best_k_models))
