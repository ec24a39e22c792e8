"""strategy="ddp_notebook" (fork) on 2 CPU ranks: the caller's module and Trainer after fit.

style: 2.x
ranks: no
known global_step: Lightning's parent Trainer keeps 0 after a ddp_notebook fit (its launcher
    brings back the weights, callback_metrics and best_model_path only); distengine brings
    back the rank's global_step and current_epoch too
known current_epoch: as global_step: Lightning's parent Trainer stays at epoch 0
known extra: Lightning brings back no best_model_score (None, a TODO in its launcher) and no
    logged_metrics ({}); distengine brings back both
"""
import os

import pytorch_lightning as pl
import torch
from conformance_report import report
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Regressor(pl.LightningModule):
    def __init__(self, lr=0.05):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y), prog_bar=True, sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return TensorDataset(x, x.sum(dim=1, keepdim=True) * 0.3)


if __name__ == "__main__":
    pl.seed_everything(7)
    model = Regressor()
    checkpoint = ModelCheckpoint(monitor="val_loss")
    trainer = pl.Trainer(strategy="ddp_notebook", accelerator="cpu",
                         devices=2, max_epochs=3, log_every_n_steps=2, enable_progress_bar=False,
                         callbacks=[checkpoint])
    trainer.fit(model, DataLoader(data(80, 0), batch_size=8, shuffle=True), DataLoader(data(24, 1), batch_size=8))
    score = checkpoint.best_model_score
    report(trainer, model, best_model_path=os.path.relpath(checkpoint.best_model_path),
           best_model_score=None if score is None else float(score),
           logged_metrics=sorted(trainer.logged_metrics))
